//! `tandem bench host-loss`: a lost host, measured from outside, on a
//! cluster the bench builds for itself out of network namespaces
//! (`tandem-testnet`): three etcd members (e1, e2, e3), three agent hosts
//! (h1, h2, h3) running real `tandem agent` processes (this executable),
//! and a control namespace (`ctl`) from which the bench drives and times
//! everything. A warm-standby pair of demo components `p0` has instance `a`
//! on h1 (preferred) and `b` on h2; h3 runs no instance and is started
//! first, so it is the controller unless a trial took it away.
//!
//! Per trial, the host of the current primary is lost, by one of:
//!
//! - `kill`: every process of the host's namespace is SIGKILLed (its agent
//!   and its instances);
//! - `isolate`: every packet into and out of the host is dropped (iptables
//!   in its namespace); its processes keep running;
//!
//! and the bench times until the backup on the other host answers, itself,
//! as primary at a higher epoch on its own port. The app is fenced by:
//!
//! - `lease`: the default (promotion once the host's lease has expired);
//! - `token`: `fencing = "token"` (promotion once the host is suspected);
//! - `device`: every host has a fence device, a script the bench writes
//!   that takes the host's interface down and exits 0 (the host is cut
//!   off), killing every process of its namespace in the background.
//!
//! After each trial the lost host is healed (rules flushed, interface up)
//! and its agent started again if it is gone, and the pair is left to
//! settle (acknowledged primary, healthy backup) before the next one.
//! With `device`, each trial runs on a fresh cluster instead (a fenced
//! host's namespace has lost its processes and interface: a fresh start
//! is simpler than rebuilding it). The
//! controller may be on the lost host: the figures include those trials
//! and the bench says how many there were.
//!
//! It needs root (namespaces, iptables), `ip`, `iptables` and `etcd`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tandem_agent::controller::ControllerRecord;
use tandem_core::model::{Event, EventKind, keys};
use tandem_demo::topology::{WarmPair, app_block};
use tandem_store::Store;
use tandem_testnet::{Host, Net, default_subnet};
use tokio::time::Instant;

use crate::Connect;
use crate::figures::stats;

/// etcd's client port on each member's address.
const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
const ETCD_PEER_PORT: u16 = 2380;
/// The agents' port (heartbeats, liveness connections).
const AGENT_PORT: u16 = 7410;
/// The demo component's port, on h1's and h2's address.
const DEMO_PORT: u16 = 8081;
/// The app of the bench.
const APP: &str = "p0";
/// The agent hosts; h3 runs no instance.
const AGENT_HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// The etcd members.
const ETCD_MEMBERS: [&str; 3] = ["e1", "e2", "e3"];
/// The interface of a host's namespace (see `tandem-testnet`).
const HOST_IF: &str = "eth0";
/// The longest wait for etcd to be healthy.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for a settled pair (agents starting, a lease expiring).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest wait for the backup to answer as primary after a host loss.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// The fence device's timeout in the topology.
const FENCE_TIMEOUT: &str = "5s";
/// The switch's port, on its host's address (`--fault link`).
const SWITCH_PORT: u16 = 5022;
/// The switch's host (`--fault link`).
const SWITCH_HOST: &str = "sw";
/// The link's probe (`--fault link`): every 50 ms, down after 2 failures.
const LINK_PROBE: &str =
    "interval = \"50ms\"\ntimeout = \"40ms\"\nfailures_before_down = 2\nsuccesses_before_up = 1\n";
/// The least time between two link-driven switchovers (`--fault link`).
const LINK_INTERVAL_MS: u64 = 1000;

/// How the app's primary is fenced when its host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// Wait for the host's lease to expire (the default).
    Lease,
    /// `fencing = "token"`: promote at once when the host is suspected.
    Token,
    /// Every host has a fence device; promote once it confirms.
    Device,
}

impl Fencing {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Fencing::Lease => "lease",
            Fencing::Token => "token",
            Fencing::Device => "device",
        }
    }
}

/// How the primary's host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of every process of the host (agent and instances).
    Kill,
    /// Every packet of the host dropped; its processes keep running.
    Isolate,
    /// Only the host's path to the "switch" (an endpoint on a host of its
    /// own, which every instance needs: a required link) is cut; the host
    /// and everything else keep working. A link-driven switchover.
    Link,
}

impl Fault {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Isolate => "isolate",
            Fault::Link => "link",
        }
    }
}

/// What [`host_loss`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoss {
    /// Number of trials.
    pub trials: usize,
    /// The agents' lease TTL in ms (etcd grants whole seconds); the renew
    /// interval is a sixth of it and the fence margin a third, as with the
    /// topology defaults (3 s, 500 ms, 1 s).
    pub lease_ttl_ms: u64,
    /// With `--fault link`: the app's `link_hold_down` in ms.
    pub link_hold_down_ms: u64,
    /// How the app is fenced.
    pub fencing: Fencing,
    /// How the host is lost.
    pub fault: Fault,
    /// Print the figures as JSON.
    pub json: bool,
    /// Keep the agents' and etcd's logs (their directory is printed) even
    /// when the run succeeds.
    pub keep_logs: bool,
}

/// One trial's outcome.
struct Sample {
    ms: f64,
    controller_lost: bool,
    /// The reason of the promotion event (`host_suspected`, `host_fenced`,
    /// `host_lost`, ...), as the controller logged it.
    reason: Option<String>,
}

/// `tandem bench host-loss`: the primary's host is killed or isolated →
/// the backup on another host answers as primary.
pub async fn host_loss(args: &HostLoss, connect: &impl Connect) -> anyhow::Result<()> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    // The namespaces are entered from a thread of their own: keep the
    // runtime's other workers going meanwhile.
    tokio::task::block_in_place(|| namespaced(args, connect))
}

/// Builds the network, runs the trials on a thread inside `ctl`, prints.
fn namespaced(args: &HostLoss, connect: &impl Connect) -> anyhow::Result<()> {
    let samples = if args.fencing == Fencing::Device {
        // A fenced host lost its processes and interface: each trial gets
        // a fresh cluster (see the module doc).
        let mut all = Vec::with_capacity(args.trials);
        for trial in 1..=args.trials {
            all.extend(session(args, connect, trial, 1)?);
        }
        all
    } else {
        session(args, connect, 1, args.trials)?
    };
    report(args, &samples);
    Ok(())
}

/// Trials `first..first + count` on a fresh cluster.
fn session(
    args: &HostLoss,
    connect: &impl Connect,
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<Sample>> {
    let mut net = Net::new(&default_subnet()).context(
        "bench host-loss builds its own etcd cluster and hosts in network namespaces: run it as root, with iproute2 and iptables installed",
    )?;
    let etcd = ETCD_MEMBERS
        .iter()
        .map(|n| net.add_host(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut hosts = BTreeMap::new();
    for n in AGENT_HOSTS {
        hosts.insert(n, net.add_host(n)?);
    }
    if args.fault == Fault::Link {
        hosts.insert(SWITCH_HOST, net.add_host(SWITCH_HOST)?);
    }
    let ctl = net.add_host("ctl")?;
    let dir = tempfile::Builder::new()
        .prefix("tandem-host-loss-")
        .tempdir_in("/dev/shm")
        .or_else(|_| {
            tempfile::Builder::new()
                .prefix("tandem-host-loss-")
                .tempdir()
        })
        .context("cannot create a temporary directory")?;
    let samples = net.run_in(&ctl, || -> anyhow::Result<Vec<Sample>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime in the control namespace")?;
        let mut rig = Rig {
            net: &net,
            etcd,
            hosts,
            dir: dir.path().to_path_buf(),
            etcd_procs: Vec::new(),
            agents: BTreeMap::new(),
            store: None,
        };
        let out = rt.block_on(rig.trials(args, connect, first, count));
        if out.is_err() {
            eprintln!("{}", rig.logs_tail());
        }
        rig.stop();
        out
    })?;
    let samples = match samples {
        Ok(s) => s,
        Err(e) => {
            let kept = dir.keep();
            eprintln!("the bench's logs are kept in {}", kept.display());
            return Err(e);
        }
    };
    net.close()
        .context("cannot remove the bench's namespaces")?;
    if args.keep_logs {
        let kept = dir.keep();
        eprintln!(
            "trials {first}..={}: logs kept in {}",
            first + count - 1,
            kept.display()
        );
    }
    Ok(samples)
}

fn report(args: &HostLoss, samples: &[Sample]) {
    let (ttl, renew, margin) = timings(args.lease_ttl_ms);
    let ms: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    let controller_lost = samples.iter().filter(|s| s.controller_lost).count();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        *reasons
            .entry(s.reason.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
    }
    let (p50, p99, max, mean) = stats(&ms);
    if args.json {
        println!(
            "{}",
            json!({"bench": "host-loss", "fencing": args.fencing.as_str(), "fault": args.fault.as_str(),
                   "trials": samples.len(), "lease_ttl_ms": ttl,
                   "renew_interval_ms": renew, "fence_margin_ms": margin,
                   "link_hold_down_ms": (args.fault == Fault::Link).then_some(args.link_hold_down_ms),
                   "controller_on_lost_host": controller_lost,
                   "promotion_reasons": reasons,
                   "p50_ms": p50, "p99_ms": p99, "max_ms": max, "mean_ms": mean, "samples_ms": ms})
        );
    } else {
        let reasons = reasons
            .iter()
            .map(|(r, n)| format!("{r} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let link = if args.fault == Fault::Link {
            format!(
                ", link hold-down {} ms, link probed every 50 ms, down after 2 failures",
                args.link_hold_down_ms
            )
        } else {
            String::new()
        };
        println!(
            "host-loss --fencing {} --fault {} (etcd in namespaces; lease TTL {ttl} ms, renew {renew} ms, fence margin {margin} ms{link}): the backup on the other host answers as primary: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, mean {mean:.1} ms ({} trials; the controller was on the lost host in {controller_lost}; promotion reasons: {reasons})",
            args.fencing.as_str(),
            args.fault.as_str(),
            samples.len()
        );
    }
}

/// Lease TTL, renew interval and fence margin (ms) for a TTL.
fn timings(lease_ttl_ms: u64) -> (u64, u64, u64) {
    (lease_ttl_ms, lease_ttl_ms / 6, lease_ttl_ms / 3)
}

/// The fence device: takes the host's interface down (the host is cut
/// off: nothing it does reaches anyone, which is what the device
/// confirms by exiting 0), then, in the background, SIGKILLs every
/// process of its namespace until none is left (the power going off).
fn fence_script(ns_prefix: &str) -> String {
    format!(
        r#"#!/bin/sh
# tandem bench host-loss fence device: fence.sh HOST
ns="{ns_prefix}$1"
ip -n "$ns" link set {HOST_IF} down || exit 1
(
  i=0
  while [ $i -lt 200 ]; do
    pids=$(ip netns pids "$ns") || exit 1
    [ -z "$pids" ] && exit 0
    kill -9 $pids 2>/dev/null
    sleep 0.01
    i=$((i + 1))
  done
) >/dev/null 2>&1 </dev/null &
exit 0
"#
    )
}

/// The working state, on the control namespace's thread.
struct Rig<'n> {
    net: &'n Net,
    etcd: Vec<Host>,
    hosts: BTreeMap<&'static str, Host>,
    dir: PathBuf,
    etcd_procs: Vec<Child>,
    agents: BTreeMap<&'static str, Child>,
    store: Option<Arc<dyn Store>>,
}

/// Dies with the thread that spawned it (the control thread, which lives
/// as long as the bench); the `Net` kills whatever is left anyway.
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

impl Rig<'_> {
    fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .get(name)
            .with_context(|| format!("no host {name}"))
    }

    fn store_url(&self) -> String {
        let members: Vec<String> = self
            .etcd
            .iter()
            .map(|h| format!("{}:{ETCD_CLIENT_PORT}", h.addr))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.dir.join(format!("{name}.log"));
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    fn topology(&self, args: &HostLoss) -> anyhow::Result<String> {
        let (ttl, renew, margin) = timings(args.lease_ttl_ms);
        let mut text = format!(
            r#"[cluster]
lease_ttl = "{ttl}ms"
renew_interval = "{renew}ms"
fence_margin = "{margin}ms"
agent_port = {AGENT_PORT}

[[sites]]
name = "dc1"
"#
        );
        let fence = self.dir.join("fence.sh");
        for name in AGENT_HOSTS {
            let h = self.host(name)?;
            text.push_str(&format!(
                "\n[[hosts]]\nname = \"{name}\"\nsite = \"dc1\"\naddress = \"{}\"\n",
                h.addr
            ));
            if args.fencing == Fencing::Device {
                text.push_str(&format!(
                    "fence = {{ command = [\"/bin/sh\", {:?}, \"{{host}}\"], timeout = \"{FENCE_TIMEOUT}\" }}\n",
                    fence.display().to_string()
                ));
            }
        }
        let pair = WarmPair {
            app: APP.into(),
            ports: [DEMO_PORT, DEMO_PORT],
            extra_args: vec!["--bind".into(), "{address}".into()],
            successes_before_healthy: 1,
            initial_backoff_ms: 20,
            stable_after_ms: 300,
            ..WarmPair::default()
        };
        let mut block = app_block(&pair, ["h1", "h2"]);
        let header = format!("[apps.{APP}]\n");
        anyhow::ensure!(block.starts_with(&header), "unexpected app block: {block}");
        if args.fencing == Fencing::Token {
            block.insert_str(header.len(), "fencing = \"token\"\n");
        }
        if args.fault == Fault::Link {
            block.insert_str(
                header.len(),
                &format!(
                    "link_hold_down = \"{}ms\"\nlink_switchover_interval = \"{LINK_INTERVAL_MS}ms\"\n",
                    args.link_hold_down_ms
                ),
            );
        }
        text.push('\n');
        text.push_str(&block);
        if args.fault == Fault::Link {
            let sw = self.host(SWITCH_HOST)?;
            text.push_str(&format!(
                "\n[[endpoints]]\nname = \"switch\"\naddress = \"{}\"\nport = {SWITCH_PORT}\n\n[[links]]\nname = \"acd\"\nfrom = \"{APP}\"\nto = \"switch\"\ncardinality = \"one\"\n{LINK_PROBE}",
                sw.addr
            ));
        }
        Ok(text)
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}=http://{}:{ETCD_PEER_PORT}", m.name, m.addr))
            .collect();
        let initial = initial.join(",");
        for m in self.etcd.clone() {
            let client = format!("http://{}:{ETCD_CLIENT_PORT}", m.addr);
            let peer = format!("http://{}:{ETCD_PEER_PORT}", m.addr);
            let data = self.dir.join("etcd").join(&m.name);
            let args = tandem_store_etcd::testing::Member {
                name: &m.name,
                client_url: &client,
                peer_url: &peer,
                initial_cluster: &initial,
                token: "tandem-host-loss",
                data_dir: &data,
            }
            .args();
            let log = self.log(&m.name)?;
            let mut cmd = Command::new("etcd");
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            pdeathsig(&mut cmd);
            let child = self
                .net
                .spawn(&m, &mut cmd)
                .context("cannot start etcd (apt-get install etcd-server)")?;
            self.etcd_procs.push(child);
        }
        Ok(())
    }

    async fn wait_etcd(&self) -> anyhow::Result<()> {
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

    /// Starts `tandem agent` on `name` (its log appends to agent-NAME.log).
    fn start_agent(&mut self, name: &'static str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let host = self.host(name)?.clone();
        let log = self.log(&format!("agent-{name}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["agent", "--store", &self.store_url(), "--host", name])
            .arg("--data-dir")
            .arg(self.dir.join(format!("{name}.agent")))
            .args(["--log-level", "info"])
            .env("NO_COLOR", "1")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pdeathsig(&mut cmd);
        let child = self
            .net
            .spawn(&host, &mut cmd)
            .with_context(|| format!("cannot start the agent of {name}"))?;
        if let Some(mut old) = self.agents.insert(name, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// True if `name`'s agent process runs.
    fn agent_alive(&mut self, name: &str) -> bool {
        self.agents
            .get_mut(name)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The host whose agent is the controller now.
    async fn controller(&self) -> Option<String> {
        let kv = self.store.as_ref()?.get(keys::CONTROLLER).await.ok()??;
        serde_json::from_slice::<ControllerRecord>(&kv.value)
            .ok()
            .map(|r| r.host)
    }

    async fn wait_controller(&self, host: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.controller().await.as_deref() != Some(host) {
            if Instant::now() > deadline {
                bail!("{host} was not elected controller\n{}", self.logs_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The primary (instance, epoch) of the app if it has acknowledged its
    /// grant and the other instance is a healthy, running backup.
    async fn settled(&self) -> Option<(String, u64)> {
        let store = self.store.as_ref()?;
        let (grant, _) = crate::hosts::settled_pair(store.as_ref(), APP).await?;
        Some((grant.instance, grant.epoch))
    }

    async fn wait_settled(&self) -> anyhow::Result<(String, u64)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.settled().await {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "{APP} has no acknowledged primary with a healthy backup after {} s\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The reason of the latest `promoted` event of the app at `epoch`.
    async fn promotion_reason(&self, epoch: u64) -> Option<String> {
        let listing = self.store.as_ref()?.list(keys::EVENTS).await.ok()?;
        listing
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Event>(&kv.value).ok())
            .filter(|e| {
                e.kind == EventKind::Promoted
                    && e.app.as_deref() == Some(APP)
                    && e.epoch == Some(epoch)
            })
            .max_by_key(|e| e.seq)
            .and_then(|e| e.reason)
    }

    /// Starts the switch: a listener on its own host, which tandem does
    /// not run (`--fault link`).
    fn start_switch(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let host = self.host(SWITCH_HOST)?.clone();
        let log = self.log("switch")?;
        let mut cmd = Command::new(exe);
        cmd.args(["demo-app", "--port", &SWITCH_PORT.to_string()])
            .args(["--bind", &host.addr.to_string()])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pdeathsig(&mut cmd);
        let child = self
            .net
            .spawn(&host, &mut cmd)
            .context("cannot start the switch")?;
        self.etcd_procs.push(child);
        Ok(())
    }

    /// Brings a lost host back: its rules flushed, its interface up, its
    /// agent started again if it is gone (the instances of a killed agent
    /// are gone with it; what is left of them is killed first).
    fn restore(&mut self, name: &'static str) -> anyhow::Result<()> {
        let host = self.host(name)?.clone();
        self.net.heal(&host)?;
        let out = Command::new("ip")
            .args(["-n", &host.ns, "link", "set", HOST_IF, "up"])
            .output()
            .context("cannot run ip")?;
        if !out.status.success() {
            bail!(
                "cannot bring {name}'s interface up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !self.agent_alive(name) {
            self.net.kill_host(&host)?;
            if let Some(mut c) = self.agents.remove(name) {
                let _ = c.wait();
            }
            self.start_agent(name)?;
        }
        Ok(())
    }

    async fn trials(
        &mut self,
        args: &HostLoss,
        connect: &impl Connect,
        first: usize,
        count: usize,
    ) -> anyhow::Result<Vec<Sample>> {
        let ns_prefix = format!("{}-", self.net.id());
        std::fs::write(self.dir.join("fence.sh"), fence_script(&ns_prefix))?;
        let text = self.topology(args)?;
        std::fs::write(self.dir.join("bench-host-loss.toml"), &text)?;
        let topology = tandem_core::topology::parse("bench-host-loss.toml", &text)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?;
        self.start_etcd()?;
        if args.fault == Fault::Link {
            self.start_switch()?;
        }
        self.wait_etcd().await?;
        let store = connect.connect(&self.store_url()).await?;
        store
            .put(keys::TOPOLOGY, serde_json::to_vec(&topology)?, None)
            .await
            .context("cannot store the topology")?;
        self.store = Some(store);
        // h3 first, so that it is the controller; then h1 (its instance is
        // preferred) and h2.
        self.start_agent("h3")?;
        self.wait_controller("h3").await?;
        self.start_agent("h1")?;
        self.start_agent("h2")?;
        let (ttl, renew, margin) = timings(args.lease_ttl_ms);
        if !args.json && first == 1 {
            println!(
                "bench host-loss --fencing {} --fault {}: etcd e1 e2 e3 and agents h1 h2 h3 in network namespaces (subnet {}.0/24), a warm-standby pair of demo components (a on h1, b on h2), {} trials",
                args.fencing.as_str(),
                args.fault.as_str(),
                default_subnet(),
                args.trials
            );
            println!(
                "  lease TTL {ttl} ms, renew interval {renew} ms, fence margin {margin} ms; heartbeats and suspicion: the topology defaults"
            );
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(200))
            .build()?;
        let mut samples = Vec::with_capacity(args.trials);
        let last = first + count - 1;
        for trial in first..=last {
            let (primary, epoch) = self
                .wait_settled()
                .await
                .with_context(|| format!("trial {trial}"))?;
            let victim = host_of(&primary);
            let backup = other(&primary);
            let victim_host = self.host(victim)?.clone();
            let url = format!("http://{}:{DEMO_PORT}/", self.host(host_of(backup))?.addr);
            let controller_lost = self.controller().await.as_deref() == Some(victim);
            if args.fault == Fault::Link {
                // Both hosts have had the link for the hold-down, and the
                // last link-driven switchover is an interval ago.
                tokio::time::sleep(Duration::from_millis(
                    LINK_INTERVAL_MS.max(args.link_hold_down_ms) + 300,
                ))
                .await;
            }

            let t0 = match args.fault {
                Fault::Kill => {
                    let t0 = Instant::now();
                    self.net.kill_host(&victim_host)?;
                    if let Some(mut c) = self.agents.remove(victim) {
                        let _ = c.wait();
                    }
                    t0
                }
                Fault::Isolate => {
                    // From the moment both rules are in: the host is cut off.
                    self.net.isolate(&victim_host)?;
                    Instant::now()
                }
                Fault::Link => {
                    let sw = self.host(SWITCH_HOST)?.clone();
                    self.net.cut(&victim_host, &sw)?;
                    Instant::now()
                }
            };
            let deadline = t0 + TAKEOVER_TIMEOUT;
            let new_epoch = loop {
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(v) = resp.json::<serde_json::Value>().await
                    && v["role"] == "primary"
                    && let Some(e) = v["epoch"].as_u64()
                    && e > epoch
                {
                    break e;
                }
                if Instant::now() > deadline {
                    bail!(
                        "trial {trial}: {APP}/{backup} did not answer as primary within {} s of losing {victim}\n{}",
                        TAKEOVER_TIMEOUT.as_secs(),
                        self.logs_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let reason = self.promotion_reason(new_epoch).await;
            if !args.json {
                println!(
                    "  trial {trial:>3}: {} {victim} (primary {APP}/{primary}{}), {APP}/{backup} primary at epoch {new_epoch} after {ms:.1} ms (promotion reason {})",
                    match args.fault {
                        Fault::Kill => "killed",
                        Fault::Isolate => "isolated",
                        Fault::Link => "cut from the switch:",
                    },
                    if controller_lost {
                        ", and the controller"
                    } else {
                        ""
                    },
                    reason.as_deref().unwrap_or("unknown")
                );
            }
            samples.push(Sample {
                ms,
                controller_lost,
                reason,
            });
            if trial < last {
                self.restore(victim)?;
            }
        }
        Ok(samples)
    }

    /// The last lines of every agent's log, for error messages.
    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for h in AGENT_HOSTS {
            let path = self.dir.join(format!("agent-{h}.log"));
            out.push_str(&format!("--- agent-{h}.log ---\n{}\n", tail(&path, 15)));
        }
        out
    }

    /// Kills the agents and etcd (the `Net` would, too, when dropped).
    fn stop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for mut c in self.etcd_procs.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn other(id: &str) -> &'static str {
    if id == "a" { "b" } else { "a" }
}

/// The host of instance `id` (`a` on h1, `b` on h2).
fn host_of(id: &str) -> &'static str {
    if id == "a" { "h1" } else { "h2" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_script_names_the_namespace_of_its_host_argument() {
        let s = fence_script("tt-1-0-");
        assert!(s.contains("ns=\"tt-1-0-$1\""), "{s}");
        assert!(s.contains("link set eth0 down"), "{s}");
    }
}
