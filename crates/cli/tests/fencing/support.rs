//! What the fencing tests add to the partitions harness: their topology
//! (long leases, fence devices, a token-fenced hot-standby aggregator), a
//! PostgreSQL server in a namespace of its own, the event log read through
//! the API, and a witness lease in etcd that orders events against the
//! earliest moment h1's lease could have expired.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_client::types::Event;
use tandem_demo::topology::{WarmPair, app_block};

use crate::harness::{Cluster, WEB_PORT};

/// The agents' lease TTL: long, so that an isolated primary is still alive
/// and acting when it is healed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often agents renew their lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(1);
/// How long before expiry a primary that cannot renew steps down.
pub const FENCE_MARGIN: Duration = Duration::from_secs(3);
/// The aggregator's port on h1 and h2.
pub const AGG_PORT: u16 = 8181;
/// The statistics source's port on h3.
pub const STATS_PORT: u16 = 9100;
/// PostgreSQL's port on the db host.
pub const PG_PORT: u16 = 5432;
/// The sink's table.
pub const TABLE: &str = "stats";

/// A host's fence device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Takes the host's interface down, kills every process of its
    /// namespace, exits 0.
    Works,
    /// Exits 1 at once.
    Fails,
}

/// What a test's topology holds.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Fence devices by host.
    pub devices: Vec<(&'static str, Device)>,
    /// A warm-standby pair `web` (a on h1, b on h2), with this `fencing`
    /// (None: the default).
    pub web: Option<Option<&'static str>>,
    /// A token-fenced hot-standby aggregator pair `agg` (a on h1, b on h2)
    /// writing to PostgreSQL (this conninfo), fed by `stats` on h3 with
    /// `(rate, count)` records.
    pub agg: Option<(String, u64, u64)>,
}

/// The fence device scripts, written into the cluster's directory.
pub fn write_devices(c: &Cluster) -> (PathBuf, PathBuf) {
    let works = c.dir.path().join("fence-works.sh");
    let fails = c.dir.path().join("fence-fails.sh");
    let prefix = format!("{}-", c.net.id());
    std::fs::write(
        &works,
        format!(
            r#"#!/bin/sh
# fence-works.sh HOST: cut HOST off and kill every process of it.
ns="{prefix}$1"
echo "fence device: $ns" >&2
ip -n "$ns" link set eth0 down || exit 1
i=0
while [ $i -lt 500 ]; do
  pids=$(ip netns pids "$ns") || exit 1
  [ -z "$pids" ] && exit 0
  kill -9 $pids 2>/dev/null
  sleep 0.01
  i=$((i + 1))
done
exit 1
"#
        ),
    )
    .expect("write fence-works.sh");
    std::fs::write(
        &fails,
        "#!/bin/sh\necho \"fence device for $1: failing on purpose\" >&2\nexit 1\n",
    )
    .expect("write fence-fails.sh");
    (works, fails)
}

fn insert_after_header(block: &str, app: &str, line: &str) -> String {
    let header = format!("[apps.{app}]\n");
    assert!(block.starts_with(&header), "unexpected app block: {block}");
    let mut b = block.to_owned();
    b.insert_str(header.len(), line);
    b
}

/// The topology text of `spec` on cluster `c`.
pub fn topology(c: &Cluster, spec: &Spec) -> String {
    let (works, fails) = write_devices(c);
    let mut t = format!(
        r#"
[cluster]
lease_ttl = "{}ms"
renew_interval = "{}ms"
fence_margin = "{}ms"

[[sites]]
name = "dc1"
"#,
        LEASE_TTL.as_millis(),
        RENEW_INTERVAL.as_millis(),
        FENCE_MARGIN.as_millis(),
    );
    for h in ["h1", "h2", "h3"] {
        t.push_str(&format!(
            "\n[[hosts]]\nname = \"{h}\"\nsite = \"dc1\"\naddress = \"{}\"\n",
            c.host(h).addr
        ));
        if let Some((_, d)) = spec.devices.iter().find(|(n, _)| *n == h) {
            let script = if *d == Device::Works { &works } else { &fails };
            t.push_str(&format!(
                "fence = {{ command = [\"/bin/sh\", {:?}, \"{{host}}\"], timeout = \"5s\" }}\n",
                script.display().to_string()
            ));
        }
    }
    if let Some(fencing) = spec.web {
        let pair = WarmPair {
            app: "web".into(),
            ports: [WEB_PORT, WEB_PORT],
            check_interval_ms: 200,
            check_timeout_ms: 150,
            failures_before_unhealthy: 3,
            successes_before_healthy: 1,
            stable_after_ms: 1000,
            stop_timeout_ms: Some(1000),
            extra_args: vec!["--bind".into(), "{address}".into()],
            ..WarmPair::default()
        };
        let mut block = app_block(&pair, ["h1", "h2"]);
        if let Some(f) = fencing {
            block = insert_after_header(&block, "web", &format!("fencing = \"{f}\"\n"));
        }
        t.push('\n');
        t.push_str(&block);
    }
    if let Some((conninfo, rate, count)) = &spec.agg {
        let h3 = c.host("h3").addr;
        t.push_str(&format!(
            r#"
[apps.stats]
ha = "none"
command = ["tandem", "demo-stats", "--port", "{{ports.http}}", "--bind", "{{address}}", "--rate", "{rate}", "--count", "{count}"]

[[apps.stats.instances]]
id = "s1"
host = "h3"
ports = {{ http = {STATS_PORT} }}

[apps.agg]
ha = "hot-standby"
fencing = "token"
command = ["tandem", "demo-aggregator", "--port", "{{ports.http}}", "--bind", "{{address}}", "--source", "http://{h3}:{STATS_PORT}", "--sink", "postgres:{conninfo}", "--table", "{TABLE}", "--batch", "20"]
stop_timeout = "1s"

[apps.agg.restart]
initial_backoff = "50ms"
stable_after = "500ms"

[[apps.agg.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "200ms"
timeout = "150ms"
failures_before_unhealthy = 3
successes_before_healthy = 1

[apps.agg.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "300ms"

[[apps.agg.instances]]
id = "a"
host = "h1"
priority = 100
ports = {{ http = {AGG_PORT} }}

[[apps.agg.instances]]
id = "b"
host = "h2"
priority = 50
ports = {{ http = {AGG_PORT} }}
"#
        ));
    }
    t
}

/// Every event of the log, oldest first, read through host `via`'s API.
pub async fn events(c: &Cluster, via: &str) -> Vec<Event> {
    let api = c.api(via);
    let mut out: Vec<Event> = Vec::new();
    loop {
        let since = out.last().map_or(0, |e| e.seq);
        let page = api
            .events(Some(since), Some(10_000))
            .await
            .unwrap_or_else(|e| panic!("events from {via}: {e}"));
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// One line per event, for failure messages.
pub fn describe(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  #{} {} {} {}/{} epoch {:?} reason {:?}: {}",
                e.seq,
                e.t_ms,
                e.kind.as_str(),
                e.app.as_deref().unwrap_or("-"),
                e.instance.as_deref().unwrap_or("-"),
                e.epoch,
                e.reason,
                e.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// True if `e` is of kind `kind` with reason `reason`.
pub fn is(e: &Event, kind: &str, reason: &str) -> bool {
    e.kind.as_str() == kind && e.reason.as_deref() == Some(reason)
}

/// True if `e` says host `host`'s lease ended (the host's own event, or an
/// instance's status gone with it).
pub fn lease_ended(e: &Event, host: &str) -> bool {
    is(e, "host", "host_lost") && mentions_host(&e.message, host)
}

/// True if `message` names host `host` as a word (`h1`, not `h12`).
pub fn mentions_host(message: &str, host: &str) -> bool {
    message
        .split(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-')
        .any(|w| w == host)
}

/// The first event of `app` promoting `instance` above epoch `above`.
pub fn promotion<'a>(
    events: &'a [Event],
    app: &str,
    instance: &str,
    above: u64,
) -> Option<&'a Event> {
    events.iter().find(|e| {
        e.kind.as_str() == "promoted"
            && e.app.as_deref() == Some(app)
            && e.instance.as_deref() == Some(instance)
            && e.epoch.is_some_and(|ep| ep > above)
    })
}

/// Runs `etcdctl ARGS` from the control host; its stdout, or a panic.
pub fn etcdctl(c: &Cluster, args: &[&str]) -> String {
    let endpoints: Vec<String> = c
        .etcd
        .iter()
        .map(|h| format!("http://{}:{}", h.addr, crate::harness::ETCD_CLIENT_PORT))
        .collect();
    let mut cmd = Command::new("etcdctl");
    cmd.arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=3s")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c
        .net
        .spawn(&c.ctl, &mut cmd)
        .expect("spawn etcdctl")
        .wait_with_output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key bound to an etcd lease granted with the agents' TTL less one
/// renew interval, just before a fault: h1 renewed its own lease at most a
/// renew interval before the fault, so this key is gone no later than h1's
/// lease could have expired. Seeing it still there after an event orders
/// that event before h1's lease could have expired (etcd's clock, not the
/// test's).
pub struct Witness {
    key: String,
}

impl Witness {
    /// Grants the lease and puts the key.
    pub fn grant(c: &Cluster) -> Witness {
        let ttl = (LEASE_TTL - RENEW_INTERVAL).as_secs().to_string();
        let out = etcdctl(c, &["lease", "grant", &ttl]);
        // "lease 694d7... granted with TTL(9s)"
        let id = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected etcdctl output: {out}"))
            .to_owned();
        let key = "/fencing-test/witness".to_owned();
        etcdctl(c, &["put", &key, "alive", &format!("--lease={id}")]);
        Witness { key }
    }

    /// True while the key (and so its lease) is there.
    pub fn alive(&self, c: &Cluster) -> bool {
        !etcdctl(c, &["get", &self.key, "--print-value-only"])
            .trim()
            .is_empty()
    }
}

/// Runs blocking `f` (PostgreSQL's client starts a runtime of its own) on a
/// fresh thread, which inherits the caller's network namespace, and waits
/// for it. A panic in `f` is propagated.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A PostgreSQL server listening on `host`'s address only, in its
/// namespace. The `Net` kills it with the namespace; drop removes its data.
pub struct Pg {
    /// libpq-style connection string of database `tandem`.
    pub conninfo: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL is not installed: apt-get install postgresql")
}

fn postgres_ids() -> (u32, u32) {
    // SAFETY: getpwnam's result is read before any other call.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "no user `postgres`: apt-get install postgresql"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

impl Pg {
    /// initdb, then the postmaster in `host`'s namespace (entered before
    /// dropping root, which `setns` needs), from the calling thread.
    pub fn start(c: &Cluster, host: &str) -> Pg {
        let bin = pg_bin();
        let (uid, gid) = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("tandem-fencing-pg-")
            .tempdir()
            .expect("pg directory");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let data = dir.path().join("data");
        let initdb = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .arg("--no-sync")
            .current_dir(dir.path())
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let h = c.host(host);
        // Trust the test subnet (initdb's --auth=trust covers loopback only).
        let subnet = match h.addr {
            std::net::IpAddr::V4(v4) => {
                let [a, b, c3, _] = v4.octets();
                format!("{a}.{b}.{c3}.0/24")
            }
            std::net::IpAddr::V6(v6) => format!("{v6}/128"),
        };
        let hba = data.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        text.push_str(&format!("host all all {subnet} trust\n"));
        std::fs::write(&hba, text).expect("write pg_hba.conf");
        let ns = std::fs::File::open(Path::new("/run/netns").join(&h.ns)).expect("open netns");
        let fd = ns.as_raw_fd();
        let log = std::fs::File::create(dir.path().join("log")).expect("pg log");
        std::os::unix::fs::chown(dir.path().join("log"), Some(uid), Some(gid)).expect("chown");
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &PG_PORT.to_string()])
            .args(["-c", &format!("listen_addresses={}", h.addr)])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=100"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("pg log"))
            .stderr(log);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn postgres");
        drop(ns);
        let base = format!(
            "host={} port={PG_PORT} user=postgres connect_timeout=5",
            h.addr
        );
        let log_path = dir.path().join("log");
        off_runtime(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut admin = loop {
                match postgres::Client::connect(&format!("{base} dbname=postgres"), postgres::NoTls)
                {
                    Ok(client) => break client,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "postgres did not start: {e}\n{}",
                            std::fs::read_to_string(&log_path).unwrap_or_default()
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            admin
                .batch_execute("CREATE DATABASE tandem")
                .expect("create database");
        });
        Pg {
            conninfo: format!("{base} dbname=tandem"),
            child,
            dir,
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}
