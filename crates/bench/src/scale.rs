//! `tandem bench scale --apps N`: what N warm-standby apps (2N processes)
//! cost a `tandem up` on this machine.
//!
//! It writes a topology of N warm-standby apps of `sleep` processes with a
//! command hook (no health checks) on one host, runs a real `tandem up` on
//! it (this executable) in a scratch directory, and measures, from outside
//! the process:
//!
//! - start → every primary serving: from starting `tandem up` to every app
//!   having an acknowledged primary (the API's status, polled every 20 ms);
//! - idle CPU and RSS once settled: the `tandem up` process's user + system
//!   time over a window (`/proc/PID/stat`) and its resident size at the end
//!   (`VmRSS`);
//! - kill -9 → new primary serving: a primary's process is killed, and the
//!   time to the `serving` event of its successor (followed on the API's
//!   event stream), over distinct apps one after the other.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tandem_client::ApiClient;
use tandem_core::model::{EventKind, Role};
use tandem_demo::topology::sleepers;
use tokio::time::Instant;

use crate::figures::stats;
use crate::free_port;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    /// Warm-standby apps (each two processes).
    pub apps: usize,
    /// Primaries killed, one app after another.
    pub kills: usize,
    /// Length of the idle window, in seconds.
    pub idle_seconds: u64,
    /// Print the figures as JSON.
    pub json: bool,
}

/// CPU time (user + system) of `pid` so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("tandem up (pid {pid}) is gone"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15.
    let ticks: u64 = fields
        .get(11..13)
        .context("unreadable /proc stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Resident size of `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A `tandem up` child, stopped (SIGTERM, then SIGKILL) when dropped.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the bench and prints its figures.
pub async fn scale(args: &Scale) -> anyhow::Result<()> {
    if args.apps == 0 {
        bail!("--apps must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let topology = dir.path().join("scale.toml");
    std::fs::write(&topology, topology_text(args.apps)?)?;
    let api = format!("127.0.0.1:{}", free_port()?);
    let started = Instant::now();
    let up = Up(spawn_up(dir.path(), &topology, &api)?);
    let pid = up.0.id();
    let client = ApiClient::new(&api)?;

    let serving = wait_all_serving(&client, args.apps, &up, dir.path()).await?;
    let start_s = started.elapsed().as_secs_f64();
    let serving_s = serving.as_secs_f64();
    // Nothing was faulted yet: any exit or failover so far is tandem's own.
    let churn = client
        .events(None, Some(10_000))
        .await?
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::PrimaryFailed | EventKind::InstanceExited | EventKind::CrashLoop
            )
        })
        .count();

    // Settle, then the idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_time(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_pct = (cpu_time(pid)? - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(pid)?;

    let kills = kill_primaries(&client, args.apps, args.kills).await?;
    let (p50, p99, max, _) = stats(&kills);
    drop(up);

    let processes = 2 * args.apps;
    if args.json {
        println!(
            "{}",
            json!({"bench": "scale", "apps": args.apps, "processes": processes,
                   "start_to_serving_s": serving_s, "run_s": start_s, "unfaulted_exits": churn,
                   "idle_cpu_pct": idle_pct, "idle_window_s": args.idle_seconds, "rss_mib": rss,
                   "kill_to_serving_p50_ms": p50, "kill_to_serving_p99_ms": p99,
                   "kill_to_serving_max_ms": max, "kills": kills.len(), "samples_ms": kills})
        );
    } else {
        println!(
            "scale: {} apps ({processes} processes): start → every primary serving {serving_s:.2} s; \
             idle CPU {idle_pct:.2} % of a core, RSS {rss:.1} MiB ({} s window); \
             kill -9 → new primary serving p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} kills); \
             exits or failovers nothing caused before the kills: {churn}",
            args.apps,
            args.idle_seconds,
            kills.len()
        );
    }
    Ok(())
}

fn topology_text(apps: usize) -> anyhow::Result<String> {
    Ok(format!(
        "[cluster]\nagent_port = {}\n\n{}",
        free_port()?,
        sleepers(apps, &[("h1", "127.0.0.1")])
    ))
}

fn spawn_up(dir: &Path, topology: &Path, api: &str) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("cannot find tandem's own executable")?;
    let log = std::fs::File::create(dir.join("up.log"))?;
    std::process::Command::new(exe)
        .arg("up")
        .arg(topology)
        .args(["--api", api, "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start tandem up")
}

/// Polls the status until every app has an acknowledged primary; returns
/// how long that took from the first answer's request.
async fn wait_all_serving(
    client: &ApiClient,
    apps: usize,
    up: &Up,
    dir: &Path,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + apps as u64 / 10);
    loop {
        if let Ok(status) = client.status().await
            && status.apps.iter().filter(|a| a.primary.is_some()).count() == apps
        {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            bail!(
                "not every primary served within the bound (tandem up pid {}); its log ends:\n{tail}",
                up.0.id()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the primary of apps s0, s1, ... one after the other (around again
/// when there are more kills than apps, once the app has a backup again);
/// each sample is the time from the kill to its successor's `serving`
/// event.
async fn kill_primaries(client: &ApiClient, apps: usize, kills: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    let last = client.events(None, Some(1)).await?;
    let mut events = client.follow_events(last.last().map(|e| e.seq));
    // The stream connects when first polled: connect it now, not after
    // the first kill (its backlog read would count against that sample).
    let _ = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    for k in 0..kills {
        let app = format!("s{}", k % apps);
        let (pid, epoch) = primary_with_backup(client, &app).await?;
        let killed_at = now_ms();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, events.next())
                .await
                .with_context(|| format!("no new primary of {app} served within 10 s"))?;
            let Some(Ok(ev)) = next else {
                bail!("the event stream ended");
            };
            if ev.kind == EventKind::Serving
                && ev.app.as_deref() == Some(app.as_str())
                && ev.epoch.is_some_and(|e| e > epoch)
            {
                samples.push((ev.t_ms as f64 - killed_at).max(0.0));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(samples)
}

/// The pid and epoch of `app`'s primary, once it also has a running
/// backup (bounded wait).
async fn primary_with_backup(client: &ApiClient, app: &str) -> anyhow::Result<(u32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let doc = client.app(app).await?;
        let primary = doc.instances.iter().find(|i| i.role == Role::Primary);
        let backup = doc
            .instances
            .iter()
            .any(|i| i.role == Role::Backup && i.pid.is_some());
        if let Some(p) = primary
            && backup
            && let (Some(pid), Some(epoch)) = (p.pid, p.epoch)
        {
            return Ok((pid, epoch));
        }
        if Instant::now() > deadline {
            bail!("{app} has no primary with a running backup to kill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
