//! `tandem bench`: measurements that print figures (tests never time
//! anything).
//!
//! `tandem bench failover` runs a warm-standby pair of demo components under
//! a real agent and controller on the embedded store (on disk, durable),
//! then, trial after trial, kills the primary with SIGKILL and times how
//! long until the backup answers as primary on its own port.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tandem_agent::local::Local;
use tandem_core::model::{AppRoles, Health, InstanceStatus, ProcessState, Role, keys};
use tandem_demo::topology::WarmPair;
use tandem_store::{EmbeddedStore, Store};
use tokio::time::Instant;

/// Flags of `tandem bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(clap::Subcommand, Debug)]
enum BenchKind {
    /// Kill -9 of a warm primary → the backup answers as primary.
    Failover {
        /// Number of trials.
        #[arg(long, default_value_t = 50)]
        trials: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging(crate::LogFormat::Text, "error");
    match args.what {
        BenchKind::Failover { trials, json } => failover(trials, json).await,
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percentile by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Pair {
    primary: String,
    pid: u32,
    epoch: u64,
    backup_port: u16,
}

async fn failover(trials: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (pa, pb) = (free_port()?, free_port()?);
    let text = tandem_demo::topology::warm_pair(&WarmPair {
        app: "bench".into(),
        ports: [pa, pb],
        check_interval_ms: 50,
        check_timeout_ms: 40,
        successes_before_healthy: 1,
        hook_timeout_ms: 500,
        initial_backoff_ms: 20,
        stable_after_ms: 300,
        ..WarmPair::default()
    });
    let topology = Arc::new(
        tandem_core::topology::parse("bench.toml", &text)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?,
    );
    let ports: BTreeMap<String, u16> = [("a".to_string(), pa), ("b".to_string(), pb)].into();
    let store: Arc<dyn Store> = EmbeddedStore::open(&dir.path().join("store"))?;
    let local = Local::start(
        store.clone(),
        topology,
        &["local".to_string()],
        dir.path().to_path_buf(),
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(200))
        .build()?;

    if !as_json {
        println!(
            "bench failover: warm-standby pair of demo components, embedded store on disk (fsync), {trials} trials"
        );
    }
    let mut samples_ms = Vec::with_capacity(trials);
    let result: anyhow::Result<()> = async {
        for trial in 0..trials {
            let pair = ready(&store, &ports)
                .await
                .with_context(|| format!("trial {trial}: the pair never became ready"))?;
            let url = format!("http://127.0.0.1:{}/", pair.backup_port);
            let t0 = Instant::now();
            kill(Pid::from_raw(pair.pid as i32), Signal::SIGKILL)
                .with_context(|| format!("cannot kill {}", pair.pid))?;
            let deadline = t0 + Duration::from_secs(10);
            loop {
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(v) = resp.json::<serde_json::Value>().await
                    && v["role"] == "primary"
                    && v["epoch"].as_u64().is_some_and(|e| e > pair.epoch)
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "trial {trial}: the backup of {} did not become primary within 10 s",
                        pair.primary
                    );
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            samples_ms.push(ms);
            if !as_json {
                println!(
                    "  trial {:>3}: killed bench/{} (pid {}), backup primary after {ms:.2} ms",
                    trial + 1,
                    pair.primary,
                    pair.pid
                );
            }
        }
        Ok(())
    }
    .await;
    local.stop().await?;
    result?;

    let mut sorted = samples_ms.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted[sorted.len() - 1],
    );
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    if as_json {
        println!(
            "{}",
            json!({"bench": "failover", "store": "embedded", "trials": trials,
                   "p50_ms": p50, "p99_ms": p99, "max_ms": max, "mean_ms": mean, "samples_ms": samples_ms})
        );
    } else {
        println!(
            "failover kill -9 → backup serving as primary: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, mean {mean:.2} ms ({trials} trials)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until one instance is the acknowledged primary and the other a
/// healthy, stable backup.
async fn ready(store: &Arc<dyn Store>, ports: &BTreeMap<String, u16>) -> anyhow::Result<Pair> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pair) = read_pair(store, ports).await {
            return Ok(pair);
        }
        if Instant::now() > deadline {
            bail!("no acknowledged primary with a healthy backup after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pair(store: &Arc<dyn Store>, ports: &BTreeMap<String, u16>) -> Option<Pair> {
    let roles: AppRoles =
        serde_json::from_slice(&store.get(&keys::roles("bench")).await.ok()??.value).ok()?;
    let grant = roles.primary?;
    let status = |id: &str| {
        let store = store.clone();
        let key = keys::status("bench", id);
        async move {
            let kv = store.get(&key).await.ok()??;
            serde_json::from_slice::<InstanceStatus>(&kv.value).ok()
        }
    };
    let p = status(&grant.instance).await?;
    if p.acting != Role::Primary || p.acting_epoch != grant.epoch {
        return None;
    }
    let backup = ports.keys().find(|id| **id != grant.instance)?;
    let b = status(backup).await?;
    let stable = b.process == ProcessState::Running
        && b.health == Health::Healthy
        && b.acting == Role::Backup
        && !b.crash_looping;
    if !stable {
        return None;
    }
    Some(Pair {
        primary: grant.instance.clone(),
        pid: p.pid?,
        epoch: grant.epoch,
        backup_port: ports[backup],
    })
}
