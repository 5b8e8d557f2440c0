//! `tandem bench etcd-load`: production mode measured from outside. It
//! runs two real `tandem agent` processes (this executable) for hosts h1
//! (127.0.0.1) and h2 (127.0.0.2) on the etcd cluster given with
//! `--store`, with warm-standby pairs of demo components (instance `a` on
//! h1, `b` on h2), N managed instances in steady state; reads etcd's
//! Prometheus counters (`/metrics` on each member's client URL) before and
//! after a window and prints the writes per instance per second and the
//! lease keep-alives per host per second. (`tandem bench host-loss` builds
//! its own cluster in network namespaces: see `host_loss.rs`.)
//!
//! It takes over everything under `/tandem/` of that cluster: it refuses
//! to run on one that holds another topology.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tandem_core::model::{
    AppRoles, Health, InstanceStatus, PrimaryGrant, ProcessState, Role, keys,
};
use tandem_core::topology::Topology;
use tandem_demo::topology::{WarmPair, app_block};
use tandem_store::Store;
use tokio::time::Instant;

use crate::{Connect, free_port};

/// The name of the topology these benches store (the stem of the file
/// name given to the parser); any other one stored in the cluster makes
/// them refuse to run.
const TOPOLOGY_NAME: &str = "bench-hosts";
/// The two hosts: name and address.
const HOSTS: [(&str, &str); 2] = [("h1", "127.0.0.1"), ("h2", "127.0.0.2")];
/// The longest wait for a settled pair (agents starting, a lease expiring).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped agent may take to stop its instances and leave.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What [`etcd_load`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdLoad {
    /// The etcd cluster (etcd://h1:2379,...); everything under /tandem/ is
    /// replaced.
    pub store: String,
    /// Managed instances (warm-standby pairs, so an even number).
    pub instances: u64,
    /// Length of the measured window, in seconds.
    pub seconds: u64,
    /// The agents' lease TTL in ms (etcd grants whole seconds); the renew interval is a sixth of it
    /// and the fence margin a third, as with the topology defaults.
    pub lease_ttl_ms: u64,
    /// Print the figures as JSON.
    pub json: bool,
}

/// An app of the bench topology and the ports of its instances a and b.
type BenchApp = (String, [u16; 2]);

/// Lease TTL, renew interval and fence margin (ms) for a TTL.
fn timings(lease_ttl_ms: u64) -> (u64, u64, u64) {
    (lease_ttl_ms, lease_ttl_ms / 6, lease_ttl_ms / 3)
}

/// The topology: `pairs` warm-standby pairs `p0`, `p1`, ... of demo
/// components, `a` on h1 (preferred) and `b` on h2, with their ports.
fn topology(lease_ttl_ms: u64, pairs: usize) -> anyhow::Result<(String, Vec<BenchApp>)> {
    let (ttl, renew, margin) = timings(lease_ttl_ms);
    let agent_port = free_port()?;
    let mut text = format!(
        r#"[cluster]
lease_ttl = "{ttl}ms"
renew_interval = "{renew}ms"
fence_margin = "{margin}ms"
agent_port = {agent_port}

[[sites]]
name = "dc1"
"#
    );
    for (name, address) in HOSTS {
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{name}\"\nsite = \"dc1\"\naddress = \"{address}\"\n"
        ));
    }
    let mut apps = Vec::with_capacity(pairs);
    for p in 0..pairs {
        let app = format!("p{p}");
        let ports = [free_port()?, free_port()?];
        let pair = WarmPair {
            app: app.clone(),
            ports,
            extra_args: vec!["--bind".into(), "{address}".into()],
            successes_before_healthy: 1,
            initial_backoff_ms: 20,
            stable_after_ms: 300,
            ..WarmPair::default()
        };
        text.push('\n');
        text.push_str(&app_block(&pair, ["h1", "h2"]));
        apps.push((app, ports));
    }
    Ok((text, apps))
}

/// The store, the agent processes and their working directory.
struct Rig {
    store: Arc<dyn Store>,
    store_url: String,
    dir: tempfile::TempDir,
    agents: BTreeMap<&'static str, Child>,
}

impl Rig {
    /// Connects, checks the cluster is free for the bench, stores the
    /// topology and starts both agents.
    async fn start(store_url: &str, text: &str, connect: &impl Connect) -> anyhow::Result<Rig> {
        let store = connect.connect(store_url).await?;
        if let Some(kv) = store.get(keys::TOPOLOGY).await? {
            let name = serde_json::from_slice::<Topology>(&kv.value)
                .map(|t| t.name)
                .unwrap_or_else(|_| "(unreadable)".into());
            if name != TOPOLOGY_NAME {
                bail!(
                    "{store_url} holds topology {name:?}: this bench replaces everything under {}, so it runs only on a scratch cluster (or one it used before)",
                    keys::ROOT
                );
            }
        }
        for kv in store.list(keys::ROOT).await?.kvs {
            store.delete(&kv.key).await?;
        }
        let topology = tandem_core::topology::parse("bench-hosts.toml", text)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?;
        store
            .put(keys::TOPOLOGY, serde_json::to_vec(&topology)?, None)
            .await
            .context("cannot store the topology")?;
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        std::fs::write(dir.path().join("bench-hosts.toml"), text)?;
        let mut rig = Rig {
            store,
            store_url: store_url.to_string(),
            dir,
            agents: BTreeMap::new(),
        };
        for (host, _) in HOSTS {
            rig.start_agent(host)?;
        }
        Ok(rig)
    }

    fn log_path(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{host}.log"))
    }

    /// Starts `tandem agent` for `host` (its log appends to agent-HOST.log).
    fn start_agent(&mut self, host: &'static str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(host))
            .with_context(|| format!("cannot open {}", self.log_path(host).display()))?;
        let child = Command::new(exe)
            .args(["agent", "--store", &self.store_url, "--host", host])
            .arg("--data-dir")
            .arg(self.dir.path().join(host))
            .args(["--log-level", "warn"])
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the agent of {host}"))?;
        self.agents.insert(host, child);
        Ok(())
    }

    /// The last lines of `host`'s agent log, for error messages.
    fn log_tail(&self, host: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(host)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops both agents with SIGTERM (they stop their instances and
    /// revoke their leases); SIGKILL after [`STOP_TIMEOUT`].
    async fn stop(mut self) {
        for child in self.agents.values() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for child in self.agents.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.agents.clear();
    }

    /// The primary (instance, pid, epoch) of `app` if it has acknowledged
    /// its grant and the other instance is a healthy, running backup.
    async fn settled(&self, app: &str) -> Option<(String, u32, u64)> {
        let (grant, p) = settled_pair(self.store.as_ref(), app).await?;
        Some((grant.instance, p.pid?, grant.epoch))
    }

    /// Waits until every app in `apps` is settled; their primaries.
    async fn wait_settled(&self, apps: &[String]) -> anyhow::Result<Vec<(String, u32, u64)>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut done = Vec::with_capacity(apps.len());
        for app in apps {
            loop {
                if let Some(p) = self.settled(app).await {
                    done.push(p);
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{app} has no acknowledged primary with a healthy backup after {} s\n--- h1 ---\n{}\n--- h2 ---\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.log_tail("h1"),
                        self.log_tail("h2")
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(done)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Only on an early return: `stop` empties the map. The instances
        // die with their agent.
        for child in self.agents.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The grant of `app`'s pair (`a` and `b`) and its holder's status, if
/// the holder acknowledged it and the other instance is a healthy, running
/// backup.
pub(crate) async fn settled_pair(
    store: &dyn Store,
    app: &str,
) -> Option<(PrimaryGrant, InstanceStatus)> {
    let roles: AppRoles =
        serde_json::from_slice(&store.get(&keys::roles(app)).await.ok()??.value).ok()?;
    let grant = roles.primary?;
    let status = |id: &str| {
        let key = keys::status(app, id);
        async move {
            let kv = store.get(&key).await.ok()??;
            serde_json::from_slice::<InstanceStatus>(&kv.value).ok()
        }
    };
    let p = status(&grant.instance).await?;
    let b = status(other(&grant.instance)).await?;
    let settled = p.acting == Role::Primary
        && p.acting_epoch == grant.epoch
        && !p.promoting
        && b.process == ProcessState::Running
        && b.health == Health::Healthy
        && b.acting == Role::Backup
        && !b.crash_looping;
    settled.then_some((grant, p))
}

fn other(id: &str) -> &'static str {
    if id == "a" { "b" } else { "a" }
}

/// Sums the samples of metric `name` whose labels include every one of
/// `labels` (`name{k="v",...} value` lines of the Prometheus text format).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((l, v)) = inner.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            // Another metric whose name starts with `name`.
            continue;
        };
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !matches {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The counters `etcd-load` reads, per member.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    proposals_committed: f64,
    puts: f64,
    txns: f64,
    deletes: f64,
    ranges: f64,
    keep_alives_received: f64,
    leases_renewed: f64,
}

impl Counters {
    fn parse(text: &str) -> anyhow::Result<Counters> {
        let get = |name: &str, labels: &[(&str, &str)]| metric_sum(text, name, labels);
        let committed = get("etcd_server_proposals_committed_total", &[])
            .context("no etcd_server_proposals_committed_total in /metrics: is this etcd?")?;
        Ok(Counters {
            proposals_committed: committed,
            puts: get("etcd_mvcc_put_total", &[]).unwrap_or(0.0),
            txns: get("etcd_mvcc_txn_total", &[]).unwrap_or(0.0),
            deletes: get("etcd_mvcc_delete_total", &[]).unwrap_or(0.0),
            ranges: get("etcd_mvcc_range_total", &[]).unwrap_or(0.0),
            keep_alives_received: get(
                "grpc_server_msg_received_total",
                &[("grpc_method", "LeaseKeepAlive")],
            )
            .unwrap_or(0.0),
            leases_renewed: get("etcd_debugging_lease_renewed_total", &[]).unwrap_or(0.0),
        })
    }
}

/// Reads every member's counters.
async fn read_counters(
    http: &reqwest::Client,
    endpoints: &[String],
) -> anyhow::Result<Vec<Counters>> {
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let url = format!("{}/metrics", e.trim_end_matches('/'));
        let text = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("cannot read {url}"))?
            .text()
            .await
            .with_context(|| format!("cannot read {url}"))?;
        out.push(Counters::parse(&text).with_context(|| url.clone())?);
    }
    Ok(out)
}

/// `tandem bench etcd-load`: etcd writes per managed instance and lease
/// keep-alives per host, in steady state.
pub async fn etcd_load(args: &EtcdLoad, connect: &impl Connect) -> anyhow::Result<()> {
    if !args.instances.is_multiple_of(2) {
        bail!(
            "--instances must be even: the instances are warm-standby pairs (got {})",
            args.instances
        );
    }
    let endpoints = tandem_store_etcd::parse_store_url(&args.store)
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    if endpoints.iter().any(|e| !e.starts_with("http://")) {
        bail!("etcd-load reads /metrics over plain HTTP: give an etcd:// store URL");
    }
    let pairs = usize::try_from(args.instances / 2)?;
    let (ttl, renew, margin) = timings(args.lease_ttl_ms);
    let (text, apps) = topology(args.lease_ttl_ms, pairs)?;
    let names: Vec<String> = apps.iter().map(|(a, _)| a.clone()).collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let rig = Rig::start(&args.store, &text, connect).await?;
    if !args.json {
        println!(
            "bench etcd-load: agents h1 (127.0.0.1) and h2 (127.0.0.2), {} managed instances ({pairs} warm-standby pairs), etcd {}; lease TTL {ttl} ms, renew interval {renew} ms, fence margin {margin} ms; a {} s window",
            args.instances, args.store, args.seconds
        );
    }
    let measured: anyhow::Result<(Vec<Counters>, Vec<Counters>, f64, bool)> = async {
        let before_roles = rig.wait_settled(&names).await?;
        // Let the last health changes and role acknowledgements land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = read_counters(&http, &endpoints).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let after = read_counters(&http, &endpoints).await?;
        let secs = t0.elapsed().as_secs_f64();
        // Nothing failed over during the window (it would add writes).
        let mut steady = true;
        for (app, (primary, _, epoch)) in names.iter().zip(&before_roles) {
            steady &= rig
                .settled(app)
                .await
                .is_some_and(|(p, _, e)| p == *primary && e == *epoch);
        }
        Ok((before, after, secs, steady))
    }
    .await;
    rig.stop().await;
    let (before, after, secs, steady) = measured?;

    // Every member applies every committed write: take the largest delta
    // of one member. Keep-alives and reads are served by the member a
    // client talks to: sum them over the members.
    let delta = |f: fn(&Counters) -> f64| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| f(a) - f(b))
            .collect()
    };
    let max = |v: Vec<f64>| v.into_iter().fold(0.0_f64, f64::max);
    let sum = |v: Vec<f64>| v.into_iter().sum::<f64>();
    let committed = max(delta(|c| c.proposals_committed));
    let puts = max(delta(|c| c.puts));
    let txns = max(delta(|c| c.txns));
    let deletes = max(delta(|c| c.deletes));
    let ranges = sum(delta(|c| c.ranges));
    let keep_alives = sum(delta(|c| c.keep_alives_received));
    let renewed = max(delta(|c| c.leases_renewed));
    let n = args.instances as f64;
    let hosts = HOSTS.len() as f64;
    let per_instance = |x: f64| x / n / secs;
    let per_host = |x: f64| x / hosts / secs;
    if args.json {
        println!(
            "{}",
            json!({"bench": "etcd-load", "instances": args.instances, "hosts": HOSTS.len(),
                   "window_s": secs, "steady": steady, "lease_ttl_ms": ttl,
                   "renew_interval_ms": renew, "fence_margin_ms": margin,
                   "proposals_committed": committed, "puts": puts, "txns": txns,
                   "deletes": deletes, "ranges": ranges, "keep_alives": keep_alives,
                   "leases_renewed": renewed,
                   "writes_per_instance_per_s": per_instance(committed),
                   "keep_alives_per_host_per_s": per_host(keep_alives)})
        );
    } else {
        println!(
            "  in {secs:.1} s: {committed} raft proposals committed ({puts} puts, {txns} txns, {deletes} deletes), {ranges} reads, {keep_alives} lease keep-alives received ({renewed} leases renewed by the leader){}",
            if steady {
                ""
            } else {
                "; NOT steady: a role changed during the window"
            }
        );
        println!(
            "etcd-load ({} instances on 2 hosts; renew interval {renew} ms): {:.4} writes/instance/s (raft proposals), {:.4} reads/instance/s, {:.2} keep-alives/host/s",
            args.instances,
            per_instance(committed),
            per_instance(ranges),
            per_host(keep_alives)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_filters_by_name_and_labels() {
        let text = "\
# HELP etcd_mvcc_put_total Total number of puts seen by this member.
etcd_mvcc_put_total 12
etcd_mvcc_put_total_other 99
grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 40
grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7
";
        assert_eq!(metric_sum(text, "etcd_mvcc_put_total", &[]), Some(12.0));
        assert_eq!(
            metric_sum(
                text,
                "grpc_server_msg_received_total",
                &[("grpc_method", "LeaseKeepAlive")]
            ),
            Some(40.0)
        );
        assert_eq!(
            metric_sum(text, "grpc_server_msg_received_total", &[]),
            Some(47.0)
        );
        assert_eq!(metric_sum(text, "etcd_nothing", &[]), None);
    }

    #[test]
    fn timings_match_the_topology_defaults_at_3_s() {
        assert_eq!(timings(3000), (3000, 500, 1000));
    }
}
