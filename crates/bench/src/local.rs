//! The benches on this machine (`tandem bench failover|cold|singleton|hot|
//! pool|discovery|proxy`).
//!
//! Each pair bench runs a pair of demo components under a real agent and
//! controller on the embedded store (on disk, durable) or an etcd cluster,
//! then, trial after trial, kills the primary with SIGKILL and times the
//! takeover:
//!
//! - [`failover`] (warm standby): until the backup answers as primary on
//!   its own port;
//! - [`cold`] (cold standby): until the spare, started by tandem, answers
//!   as primary;
//! - [`singleton`]: kill-to-serving, and the gap between the last tick the
//!   killed instance journaled and the first tick of its successor (both
//!   tick every 2 ms).

use std::collections::BTreeMap;
use std::path::Path;
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

use crate::figures::{report, stats};
use crate::{Connect, Trials, free_port};

/// Kill -9 of a warm primary → the backup answers as primary.
pub async fn failover(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    pair_bench("warm-standby", t, connect).await
}

/// Kill -9 of a cold-standby primary → the spare, started, answers as
/// primary.
pub async fn cold(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    pair_bench("cold-standby", t, connect).await
}

/// Kill -9 of a singleton → the gap until another one runs.
pub async fn singleton(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    pair_bench("singleton", t, connect).await
}

/// A discovery client: kill -9 → its first successful request to the new
/// primary (it is told by push).
pub async fn discovery(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    client_bench(false, t, connect).await
}

/// `tandem proxy`: kill -9 → the first successful request through the
/// proxy; and the proxy's latency and throughput against a direct
/// connection.
pub async fn proxy(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    client_bench(true, t, connect).await
}

/// Kill -9 of a hot-standby aggregator → the new primary writes again: a
/// hot-standby pair of aggregators on a statistics stream (SQLite sink);
/// each trial kills the primary and times until the new primary has taken
/// the sink over and written again.
pub async fn hot(t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    let (trials, as_json) = (t.trials, t.json);
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (sp, pa, pb) = (free_port()?, free_port()?, free_port()?);
    let db = dir.path().join("bench.db");
    let text = format!(
        r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[apps.stats]
ha = "none"
command = ["tandem", "demo-stats", "--port", "{{ports.http}}", "--rate", "2000"]

[[apps.stats.instances]]
id = "s"
host = "local"
ports = {{ http = {sp} }}

[apps.bench]
ha = "hot-standby"
command = ["tandem", "demo-aggregator", "--port", "{{ports.http}}", "--source", "http://127.0.0.1:{sp}", "--sink", "sqlite:{db}", "--batch", "20"]

[apps.bench.restart]
initial_backoff = "20ms"
stable_after = "300ms"
crashloop_after = 1000

[[apps.bench.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "50ms"
timeout = "40ms"
failures_before_unhealthy = 2
successes_before_healthy = 1

[apps.bench.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "500ms"

[[apps.bench.instances]]
id = "a"
host = "local"
ports = {{ http = {pa} }}

[[apps.bench.instances]]
id = "b"
host = "local"
ports = {{ http = {pb} }}
"#,
        db = db.display()
    );
    let ports: BTreeMap<String, u16> = [("a".to_string(), pa), ("b".to_string(), pb)].into();
    let Rig { store, local, http } =
        Rig::start(&text, dir.path(), t.store.as_deref(), connect).await?;
    if !as_json {
        println!(
            "bench hot: a hot-standby pair of aggregators on a 2000 records/s stream, SQLite sink, {trials} trials"
        );
    }
    let mut samples = Vec::with_capacity(trials);
    let result: anyhow::Result<()> = async {
        for trial in 0..trials {
            let pair = ready(&store, &ports, "warm-standby")
                .await
                .with_context(|| format!("trial {trial}: the pair never became ready"))?;
            // The primary must be writing before it is killed.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let url = format!("http://127.0.0.1:{}/", pair.backup_port);
            let before = http
                .get(&url)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await?;
            let takeovers = before["takeovers"].as_u64().unwrap_or(0);
            let t0 = Instant::now();
            kill(Pid::from_raw(pair.pid as i32), Signal::SIGKILL)
                .with_context(|| format!("cannot kill {}", pair.pid))?;
            let deadline = t0 + Duration::from_secs(10);
            loop {
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(v) = resp.json::<serde_json::Value>().await
                    && v["takeovers"].as_u64().is_some_and(|t| t > takeovers)
                    && v["written"].as_u64().is_some_and(|w| w > 0)
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("trial {trial}: the other aggregator did not write within 10 s");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            samples.push(ms);
            if !as_json {
                println!(
                    "  trial {:>3}: killed bench/{}, new primary wrote after {ms:.2} ms",
                    trial + 1,
                    pair.primary
                );
            }
        }
        Ok(())
    }
    .await;
    local.stop().await?;
    result?;
    report(
        "hot-standby kill -9 → the new primary has written again",
        &samples,
        as_json,
        json!({"sink": "sqlite"}),
    );
    Ok(())
}

/// Pool dispatch: IS ALIVE round + job accepted, over real workers. Three
/// real builder processes; each trial dispatches one job and times the IS
/// ALIVE round plus the job's acceptance.
pub async fn pool(trials: usize, as_json: bool) -> anyhow::Result<()> {
    use tandem_client::pool::{DispatchOptions, Dispatcher, Job, Worker, WorkerSource};
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let mut children = Vec::new();
    let mut workers = Vec::new();
    for i in 0..3 {
        let port = free_port()?;
        let child = tokio::process::Command::new(&exe)
            .args([
                "demo-builder",
                "--port",
                &port.to_string(),
                "--build-ms",
                "5",
                "--instance",
                &format!("b{i}"),
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a builder")?;
        children.push(child);
        workers.push(Worker::new(
            format!("b{i}"),
            format!("http://127.0.0.1:{port}"),
        ));
    }
    let dispatcher = Dispatcher::new(WorkerSource::Static(workers), DispatchOptions::default());
    // Wait for the workers to answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dispatcher
        .free_workers()
        .await
        .map(|w| w.len())
        .unwrap_or(0)
        < 3
    {
        if Instant::now() > deadline {
            bail!("the builders did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !as_json {
        println!("bench pool: 3 builder processes, {trials} sequential jobs");
    }
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        let done = dispatcher
            .run(Job::new(format!("bench-{trial}"), "payload"))
            .await
            .with_context(|| format!("job {trial}"))?;
        if let Some(d) = done.dispatch_latency() {
            samples.push(d.as_secs_f64() * 1000.0);
        }
    }
    drop(children);
    report(
        "pool dispatch (IS ALIVE to 3 workers + job accepted)",
        &samples,
        as_json,
        json!({}),
    );
    Ok(())
}

/// The first and last `acting` journal times (ms) of process `pid`.
fn acting_span(journal: &Path, pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(journal).ok()?;
    let times: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)) && v["event"] == "acting")
        .filter_map(|v| v["t_ms"].as_u64())
        .collect();
    Some((*times.iter().min()?, *times.iter().max()?))
}

/// A bench topology running in this process: store, agent and
/// controller, and an HTTP client for asking the components.
struct Rig {
    store: Arc<dyn Store>,
    local: Local,
    http: reqwest::Client,
}

impl Rig {
    async fn start(
        topology: &str,
        dir: &Path,
        etcd: Option<&str>,
        connect: &impl Connect,
    ) -> anyhow::Result<Rig> {
        let topology = Arc::new(
            tandem_core::topology::parse("bench.toml", topology)
                .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?,
        );
        let store: Arc<dyn Store> = match etcd {
            None => EmbeddedStore::open(&dir.join("store"))?,
            Some(url) => {
                let store = connect.connect(url).await?;
                // A clean slate under /tandem/ for this run.
                for kv in store.list(tandem_core::model::keys::ROOT).await?.kvs {
                    store.delete(&kv.key).await?;
                }
                store
            }
        };
        let local = Local::start(
            store.clone(),
            topology,
            &["local".to_string()],
            dir.to_path_buf(),
        )?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(200))
            .build()?;
        Ok(Rig { store, local, http })
    }
}

struct Pair {
    primary: String,
    pid: u32,
    epoch: u64,
    backup_port: u16,
}

async fn pair_bench(mode: &str, t: &Trials, connect: &impl Connect) -> anyhow::Result<()> {
    let (trials, as_json) = (t.trials, t.json);
    let store_name = if t.store.is_some() {
        "etcd"
    } else {
        "embedded"
    };
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (pa, pb) = (free_port()?, free_port()?);
    let journal = dir.path().join("journal.{instance}.jsonl");
    let text = tandem_demo::topology::warm_pair(&WarmPair {
        app: "bench".into(),
        mode: mode.into(),
        ports: [pa, pb],
        check_interval_ms: 50,
        check_timeout_ms: 40,
        successes_before_healthy: 1,
        hook_timeout_ms: 500,
        initial_backoff_ms: 20,
        stable_after_ms: 300,
        extra_args: vec![
            "--journal".into(),
            journal.display().to_string(),
            "--acting-every-ms".into(),
            "2".into(),
        ],
        ..WarmPair::default()
    });
    let ports: BTreeMap<String, u16> = [("a".to_string(), pa), ("b".to_string(), pb)].into();
    let Rig { store, local, http } =
        Rig::start(&text, dir.path(), t.store.as_deref(), connect).await?;

    if !as_json {
        println!("bench {mode}: a pair of demo components, {store_name} store, {trials} trials");
    }
    let mut serving_ms = Vec::with_capacity(trials);
    let mut gap_ms = Vec::with_capacity(trials);
    let result: anyhow::Result<()> = async {
        for trial in 0..trials {
            let pair = ready(&store, &ports, mode)
                .await
                .with_context(|| format!("trial {trial}: the pair never became ready"))?;
            if mode != "warm-standby" {
                // Let the primary run past stable_after (300 ms): killing it
                // sooner counts as a crash loop, as it would in production.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            let url = format!("http://127.0.0.1:{}/", pair.backup_port);
            let t0 = Instant::now();
            kill(Pid::from_raw(pair.pid as i32), Signal::SIGKILL)
                .with_context(|| format!("cannot kill {}", pair.pid))?;
            let deadline = t0 + Duration::from_secs(10);
            let new_pid = loop {
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(v) = resp.json::<serde_json::Value>().await
                    && v["role"] == "primary"
                    && v["epoch"].as_u64().is_some_and(|e| e > pair.epoch)
                {
                    break v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
                }
                if Instant::now() > deadline {
                    bail!(
                        "trial {trial}: the other instance of {} did not become primary within 10 s",
                        pair.primary
                    );
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            serving_ms.push(ms);
            let mut line = format!(
                "  trial {:>3}: killed bench/{} (pid {}), successor primary after {ms:.2} ms",
                trial + 1,
                pair.primary,
                pair.pid
            );
            if mode == "singleton" {
                // The killed one's last tick and the new one's first.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let other = if pair.primary == "a" { "b" } else { "a" };
                let old = acting_span(
                    &dir.path().join(format!("journal.{}.jsonl", pair.primary)),
                    pair.pid,
                );
                let new = acting_span(&dir.path().join(format!("journal.{other}.jsonl")), new_pid);
                if let (Some((_, last)), Some((first, _))) = (old, new) {
                    let gap = first as f64 - last as f64;
                    gap_ms.push(gap);
                    line.push_str(&format!("; gap {gap:.0} ms"));
                }
            }
            if !as_json {
                println!("{line}");
            }
        }
        Ok(())
    }
    .await;
    local.stop().await?;
    result?;

    let (p50, p99, max, mean) = stats(&serving_ms);
    let gap = (!gap_ms.is_empty()).then(|| stats(&gap_ms));
    if as_json {
        let mut doc = json!({"bench": mode, "store": store_name, "trials": trials,
               "p50_ms": p50, "p99_ms": p99, "max_ms": max, "mean_ms": mean, "samples_ms": serving_ms});
        if let Some((g50, g99, gmax, gmean)) = gap {
            doc["gap_p50_ms"] = json!(g50);
            doc["gap_p99_ms"] = json!(g99);
            doc["gap_max_ms"] = json!(gmax);
            doc["gap_mean_ms"] = json!(gmean);
            doc["gap_samples_ms"] = json!(gap_ms);
        }
        println!("{doc}");
    } else {
        println!(
            "{mode} ({store_name} store): kill -9 → successor serving as primary: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, mean {mean:.2} ms ({trials} trials)"
        );
        if let Some((g50, g99, gmax, gmean)) = gap {
            println!(
                "{mode}: last tick of the old → first tick of the new: p50 {g50:.0} ms, p99 {g99:.0} ms, max {gmax:.0} ms, mean {gmean:.1} ms ({} trials; ticks every 2 ms)",
                gap_ms.len()
            );
        }
    }
    Ok(())
}

/// Waits until one instance is the acknowledged primary and the other a
/// healthy, stable backup.
async fn ready(
    store: &Arc<dyn Store>,
    ports: &BTreeMap<String, u16>,
    mode: &str,
) -> anyhow::Result<Pair> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pair) = read_pair(store, ports, mode).await {
            return Ok(pair);
        }
        if Instant::now() > deadline {
            bail!("no acknowledged primary with a healthy backup after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pair(
    store: &Arc<dyn Store>,
    ports: &BTreeMap<String, u16>,
    mode: &str,
) -> Option<Pair> {
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
    if p.acting != Role::Primary || p.acting_epoch != grant.epoch || p.promoting {
        return None;
    }
    let backup = ports.keys().find(|id| **id != grant.instance)?;
    let b = status(backup).await?;
    let stable = if mode == "warm-standby" {
        b.process == ProcessState::Running
            && b.health == Health::Healthy
            && b.acting == Role::Backup
            && !b.crash_looping
    } else {
        // A stopped spare, not crash-looping, behind a healthy primary.
        !b.process.is_live() && !b.crash_looping && p.health == Health::Healthy
    };
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

/// The API of `rig`'s store, served on a free port: (address, stop).
async fn serve_api(
    store: Arc<dyn Store>,
    topology: &str,
) -> anyhow::Result<(String, tokio_util::sync::CancellationToken)> {
    let topology = Arc::new(
        tandem_core::topology::parse("bench.toml", topology)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let state = tandem_api::ApiState::new(store, topology);
    let s = stop.clone();
    tokio::spawn(async move { tandem_api::serve(listener, state, s.cancelled_owned()).await });
    Ok((addr, stop))
}

/// Discovery or proxy: each trial kills the primary and times the first
/// successful request (answered by a primary with a higher epoch), with
/// a new connection per request.
async fn client_bench(
    through_proxy: bool,
    t: &Trials,
    connect: &impl Connect,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (trials, as_json) = (t.trials, t.json);
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
        // The `role` line says when the new primary took its role.
        extra_args: vec![
            "--journal".into(),
            dir.path()
                .join("journal.{instance}.jsonl")
                .display()
                .to_string(),
        ],
        ..WarmPair::default()
    });
    let ports: BTreeMap<String, u16> = [("a".to_string(), pa), ("b".to_string(), pb)].into();
    let Rig { store, local, http } =
        Rig::start(&text, dir.path(), t.store.as_deref(), connect).await?;
    let (api, api_stop) = serve_api(store.clone(), &text).await?;
    let client = tandem_client::ApiClient::new(&api)?;
    // The client's view of the primary, kept current by push.
    let (tx, view) = tokio::sync::watch::channel::<Option<(String, u64)>>(None);
    let mut proxy_addr = String::new();
    let proxy_stop = tokio_util::sync::CancellationToken::new();
    if through_proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        proxy_addr = listener.local_addr()?.to_string();
        let target = tandem_client::proxy::follow_primary(client.clone(), "bench");
        let stop = proxy_stop.clone();
        tokio::spawn(tandem_client::proxy::serve(
            listener,
            target,
            tandem_client::proxy::ProxyOptions::default(),
            stop.cancelled_owned(),
        ));
    } else {
        let mut updates =
            Box::pin(tandem_client::discovery::Discovery::new(client.clone()).watch("bench"));
        tokio::spawn(async move {
            while let Some(u) = updates.next().await {
                if let Ok(doc) = u {
                    let v =
                        doc.and_then(|d| d.port.map(|p| (format!("{}:{p}", d.address), d.epoch)));
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(200))
        .build()?;
    let what = if through_proxy { "proxy" } else { "discovery" };
    if !as_json {
        println!(
            "bench {what}: a warm-standby pair, {trials} trials, a new connection per request"
        );
    }
    let mut samples = Vec::with_capacity(trials);
    let mut since_promotion = Vec::with_capacity(trials);
    let mut ratio = serde_json::Value::Null;
    let result: anyhow::Result<()> = async {
        for trial in 0..trials {
            let pair = ready(&store, &ports, "warm-standby")
                .await
                .with_context(|| format!("trial {trial}: the pair never became ready"))?;
            let t0 = Instant::now();
            kill(Pid::from_raw(pair.pid as i32), Signal::SIGKILL)
                .with_context(|| format!("cannot kill {}", pair.pid))?;
            let deadline = t0 + Duration::from_secs(10);
            let (answered_ms, answer) = loop {
                let url = if through_proxy {
                    Some(format!("http://{proxy_addr}/"))
                } else {
                    view.borrow().clone().filter(|(_, e)| *e > pair.epoch).map(|(a, _)| format!("http://{a}/"))
                };
                if let Some(url) = url
                    && let Ok(r) = fresh.get(&url).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && v["role"] == "primary"
                    && v["epoch"].as_u64().is_some_and(|e| e > pair.epoch)
                {
                    break (wall_clock_ms(), v);
                }
                if Instant::now() > deadline {
                    bail!("trial {trial}: no successful request within 10 s");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            samples.push(ms);
            let promoted = promoted_at_ms(dir.path(), &answer)
                .zip(answered_ms)
                .map(|(at, done)| done - at as f64);
            since_promotion.extend(promoted);
            if !as_json {
                let after = promoted
                    .map(|p| format!(" ({p:.2} ms after the promotion)"))
                    .unwrap_or_default();
                println!(
                    "  trial {:>3}: first successful request after {ms:.2} ms{after}",
                    trial + 1
                );
            }
        }
        if through_proxy {
            // Latency and throughput through the proxy vs direct, in one run,
            // one keep-alive connection each, sequential requests.
            let pair = ready(&store, &ports, "warm-standby").await?;
            let direct = format!("http://127.0.0.1:{}/", ports[&pair.primary]);
            let proxied = format!("http://{proxy_addr}/");
            let measure = |url: String| {
                let http = http.clone();
                async move {
                    let mut lat = Vec::new();
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(2) {
                        let t = Instant::now();
                        http.get(&url).send().await?.bytes().await?;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    anyhow::Ok(lat)
                }
            };
            let d = measure(direct).await?;
            let p = measure(proxied).await?;
            let (d50, d99, _, _) = stats(&d);
            let (p50, p99, _, _) = stats(&p);
            let (drps, prps) = (d.len() as f64 / 2.0, p.len() as f64 / 2.0);
            if !as_json {
                println!(
                    "proxy vs direct (one keep-alive connection, sequential GETs, 2 s each): latency p50 {p50:.3} vs {d50:.3} ms (x{:.2}), p99 {p99:.3} vs {d99:.3} ms; throughput {prps:.0} vs {drps:.0} req/s (x{:.2})",
                    p50 / d50,
                    prps / drps
                );
            }
            ratio = json!({"proxy_p50_ms": p50, "direct_p50_ms": d50, "proxy_p99_ms": p99, "direct_p99_ms": d99,
                           "proxy_rps": prps, "direct_rps": drps, "latency_ratio": p50 / d50, "throughput_ratio": prps / drps});
        }
        Ok(())
    }
    .await;
    proxy_stop.cancel();
    api_stop.cancel();
    local.stop().await?;
    result?;
    let (s50, s99, smax, smean) = stats(&since_promotion);
    report(
        &format!("{what}: kill -9 → first successful request to the new primary"),
        &samples,
        as_json,
        json!({"vs_direct": ratio,
               "since_promotion": {"trials": since_promotion.len(), "p50_ms": s50, "p99_ms": s99,
                                   "max_ms": smax, "mean_ms": smean, "samples_ms": since_promotion}}),
    );
    if !as_json {
        println!(
            "{what}: the new primary took its role (its journal) → first successful request to it: p50 {s50:.2} ms, p99 {s99:.2} ms, max {smax:.2} ms, mean {smean:.2} ms ({} trials; journal times in whole ms)",
            since_promotion.len()
        );
    }
    Ok(())
}

/// Wall-clock now, in ms since the Unix epoch (what the journals record).
fn wall_clock_ms() -> Option<f64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

/// When the process that gave `answer` (a demo component's `GET /`) took
/// the primary role at the answer's epoch: the wall-clock ms of its `role`
/// line in `dir/journal.{instance}.jsonl`.
fn promoted_at_ms(dir: &Path, answer: &serde_json::Value) -> Option<u64> {
    let instance = answer["instance"].as_str()?;
    let (pid, epoch) = (answer["pid"].as_u64()?, answer["epoch"].as_u64()?);
    let text = std::fs::read_to_string(dir.join(format!("journal.{instance}.jsonl"))).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["event"] == "role"
                && v["role"] == "primary"
                && v["pid"].as_u64() == Some(pid)
                && v["epoch"].as_u64() == Some(epoch)
        })
        .filter_map(|v| v["t_ms"].as_u64())
        .min()
}
