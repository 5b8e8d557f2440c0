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
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tandem_core::model::{Event, EventKind, keys};
use tandem_demo::topology::{WarmPair, app_block};
use tandem_testnet::default_subnet;
use tokio::time::Instant;

use crate::Connect;
use crate::figures::stats;
use crate::netrig::{AGENT_PORT, NetRig, Spec, timings};

/// The demo component's port, on h1's and h2's address.
const DEMO_PORT: u16 = 8081;
/// The app of the bench.
const APP: &str = "p0";
/// The agent hosts; h3 runs no instance.
const AGENT_HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Lines of each agent's log printed on error.
const LOG_TAIL_LINES: usize = 15;
/// The interface of a host's namespace (see `tandem-testnet`).
const HOST_IF: &str = "eth0";
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
    let rig = NetRig::new(Spec {
        bench: "host-loss",
        agent_hosts: &AGENT_HOSTS,
        other_hosts: if args.fault == Fault::Link {
            &[SWITCH_HOST]
        } else {
            &[]
        },
        api_port: None,
        log_tail_lines: LOG_TAIL_LINES,
    })?;
    rig.run(
        args.keep_logs,
        &format!("trials {first}..={}", first + count - 1),
        async |rig| trials(rig, args, connect, first, count).await,
    )
}

/// Prints the figures of every trial.
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

/// The bench's topology: h1..h3 in one site, the pair `p0` on h1 and h2,
/// fenced and linked as `args` says.
fn topology(rig: &NetRig, args: &HostLoss) -> anyhow::Result<String> {
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
    let fence = rig.dir().join("fence.sh");
    for name in AGENT_HOSTS {
        let h = rig.host(name)?;
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
        let sw = rig.host(SWITCH_HOST)?;
        text.push_str(&format!(
            "\n[[endpoints]]\nname = \"switch\"\naddress = \"{}\"\nport = {SWITCH_PORT}\n\n[[links]]\nname = \"acd\"\nfrom = \"{APP}\"\nto = \"switch\"\ncardinality = \"one\"\n{LINK_PROBE}",
            sw.addr
        ));
    }
    Ok(text)
}

/// grant and the other instance is a healthy, running backup.
async fn settled(rig: &NetRig) -> Option<(String, u64)> {
    let store = rig.store()?;
    let (grant, _) = crate::hosts::settled_pair(store.as_ref(), APP).await?;
    Some((grant.instance, grant.epoch))
}

/// Waits until [`settled`] says the pair is settled.
async fn wait_settled(rig: &NetRig) -> anyhow::Result<(String, u64)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(p) = settled(rig).await {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!(
                "{APP} has no acknowledged primary with a healthy backup after {} s\n{}",
                READY_TIMEOUT.as_secs(),
                rig.logs_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reason of the latest `promoted` event of the app at `epoch`.
async fn promotion_reason(rig: &NetRig, epoch: u64) -> Option<String> {
    let listing = rig.store()?.list(keys::EVENTS).await.ok()?;
    listing
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Event>(&kv.value).ok())
        .filter(|e| {
            e.kind == EventKind::Promoted && e.app.as_deref() == Some(APP) && e.epoch == Some(epoch)
        })
        .max_by_key(|e| e.seq)
        .and_then(|e| e.reason)
}

/// Starts the switch: a listener on its own host, which tandem does
/// not run (`--fault link`).
fn start_switch(rig: &mut NetRig) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let host = rig.host(SWITCH_HOST)?.clone();
    let log = rig.log("switch")?;
    let mut cmd = Command::new(exe);
    cmd.args(["demo-app", "--port", &SWITCH_PORT.to_string()])
        .args(["--bind", &host.addr.to_string()])
        .current_dir(rig.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    rig.spawn(&host, &mut cmd)
        .context("cannot start the switch")
}

/// Brings a lost host back: its rules flushed, its interface up, its
/// agent started again if it is gone (the instances of a killed agent
/// are gone with it; what is left of them is killed first).
fn restore(rig: &mut NetRig, name: &'static str) -> anyhow::Result<()> {
    let host = rig.host(name)?.clone();
    rig.net().heal(&host)?;
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
    if !rig.agent_alive(name) {
        rig.net().kill_host(&host)?;
        rig.reap_agent(name);
        rig.start_agent(name)?;
    }
    Ok(())
}

/// Starts the cluster (etcd, the switch with `--fault link`, the agents,
/// h3 first), then runs trials `first..first + count` on it.
async fn trials(
    rig: &mut NetRig,
    args: &HostLoss,
    connect: &impl Connect,
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<Sample>> {
    let ns_prefix = format!("{}-", rig.net().id());
    std::fs::write(rig.dir().join("fence.sh"), fence_script(&ns_prefix))?;
    let text = topology(rig, args)?;
    let topology = rig.write_topology("bench-host-loss.toml", &text)?;
    rig.start_etcd()?;
    if args.fault == Fault::Link {
        start_switch(rig)?;
    }
    rig.wait_etcd().await?;
    rig.connect(connect, &topology).await?;
    // h3 first, so that it is the controller; then h1 (its instance is
    // preferred) and h2.
    rig.start_agent("h3")?;
    rig.wait_controller("h3", READY_TIMEOUT).await?;
    rig.start_agent("h1")?;
    rig.start_agent("h2")?;
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
        let (primary, epoch) = wait_settled(rig)
            .await
            .with_context(|| format!("trial {trial}"))?;
        let victim = host_of(&primary);
        let backup = other(&primary);
        let victim_host = rig.host(victim)?.clone();
        let url = format!("http://{}:{DEMO_PORT}/", rig.host(host_of(backup))?.addr);
        let controller_lost = rig.controller().await.as_deref() == Some(victim);
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
                rig.net().kill_host(&victim_host)?;
                rig.reap_agent(victim);
                t0
            }
            Fault::Isolate => {
                // From the moment both rules are in: the host is cut off.
                rig.net().isolate(&victim_host)?;
                Instant::now()
            }
            Fault::Link => {
                let sw = rig.host(SWITCH_HOST)?.clone();
                rig.net().cut(&victim_host, &sw)?;
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
                    rig.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let reason = promotion_reason(rig, new_epoch).await;
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
            restore(rig, victim)?;
        }
    }
    Ok(samples)
}

/// The other instance of the pair.
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
