//! A throwaway PostgreSQL cluster for the tests, the throughput example and
//! the CLI's hot-standby end-to-end test (which includes this file):
//! `initdb` into a temporary directory, a postmaster on a free loopback port
//! (its Unix socket in that directory too), one database `tandem`.
//!
//! One cluster per process, started on first use. It never outlives the
//! process: at a normal exit an `atexit` handler shuts it down (immediate
//! mode) and waits for it; if the process dies any other way (a signal, an
//! abort) the kernel sends the postmaster SIGQUIT (`PR_SET_PDEATHSIG`).
#![allow(dead_code)] // each user takes what it needs

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running cluster.
pub struct PgCluster {
    /// libpq-style connection string of the `tandem` database.
    pub conninfo: String,
    pid: libc::pid_t,
    dir: PathBuf,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// How long the postmaster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an immediate shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries with a new port when the one picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// The process's cluster, started on first use (`fsync`: whether the server
/// syncs its WAL: off for tests, on for the benchmark).
pub fn shared(fsync: bool) -> &'static PgCluster {
    CLUSTER.get_or_init(|| {
        let cluster = start(fsync);
        // SAFETY: `stop_at_exit` is an `extern "C" fn()` that only touches
        // the static cluster, which outlives every caller.
        let rc = unsafe { libc::atexit(stop_at_exit) };
        assert_eq!(
            rc, 0,
            "atexit failed: the test cluster would outlive the process"
        );
        cluster
    })
}

/// The directory with `initdb` and `postgres`, or a panic telling how to install them.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
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
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("PostgreSQL is not installed: apt-get install postgresql"),
    }
}

/// The user the server runs as: `postgres` when we are root (initdb refuses
/// root), else ourselves.
fn server_user() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: plain libc calls; getpwnam's result is read before any other call.
    unsafe {
        if libc::geteuid() != 0 {
            return (libc::geteuid(), libc::getegid());
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "no user `postgres`: PostgreSQL is not installed: apt-get install postgresql"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn start(fsync: bool) -> PgCluster {
    let bin = bin_dir();
    let (uid, gid) = server_user();
    let dir = tempfile::Builder::new()
        .prefix("tandem-pg-")
        .tempdir()
        .expect("create a temporary directory")
        .keep();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster directory");
    let data = dir.join("data");
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
            "--no-sync",
        ])
        .current_dir(&dir)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run initdb");
    assert!(
        initdb.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );

    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        let pid = spawn_postmaster(&bin, &dir, port, uid, gid, fsync);
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=5");
        match wait_ready(pid, &conninfo) {
            Ok(mut admin) => {
                admin
                    .batch_execute("CREATE DATABASE tandem")
                    .expect("create the test database");
                return PgCluster {
                    conninfo: format!("{conninfo} dbname=tandem"),
                    pid,
                    dir,
                };
            }
            Err(why) if attempt < PORT_ATTEMPTS => {
                eprintln!("postgres on port {port}: {why}; trying another port")
            }
            Err(why) => {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                panic!("postgres did not start: {why}\n{log}");
            }
        }
    }
    unreachable!("the loop returns or panics")
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Starts the postmaster from a thread that never ends, so that
/// `PR_SET_PDEATHSIG` (tied to the spawning *thread*) fires only when the
/// whole process goes.
fn spawn_postmaster(
    bin: &Path,
    dir: &Path,
    port: u16,
    uid: u32,
    gid: u32,
    fsync: bool,
) -> libc::pid_t {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("open the server log");
    let log_err = log.try_clone().expect("clone the server log");
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
        ])
        .arg(dir)
        .args([
            "-c",
            if fsync { "fsync=on" } else { "fsync=off" },
            "-c",
            "max_connections=200",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .uid(uid)
        .gid(gid);
    // SAFETY: prctl is async-signal-safe; it runs after the uid change, which
    // would otherwise clear it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let spawned = command.spawn().map(|child| child.id());
            let _ = tx.send(spawned);
            loop {
                std::thread::park();
            }
        })
        .expect("spawn the postmaster's parent thread");
    let pid = rx
        .recv()
        .expect("the postmaster's parent thread")
        .expect("spawn postgres");
    libc::pid_t::try_from(pid).expect("pid fits pid_t")
}

/// Waits until the server accepts connections, or says why not.
fn wait_ready(pid: libc::pid_t, conninfo: &str) -> Result<postgres::Client, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match postgres::Client::connect(&format!("{conninfo} dbname=postgres"), postgres::NoTls) {
            Ok(client) => return Ok(client),
            Err(e) => {
                let mut status = 0;
                // SAFETY: `pid` is our child; WNOHANG does not block.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    return Err(format!("the server exited (status {status}): {e}"));
                }
                if Instant::now() > deadline {
                    // SAFETY: `pid` is our child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return Err(format!("not ready after {START_TIMEOUT:?}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Shuts the cluster down (immediate mode: nothing to keep), waits for the
/// postmaster (which waits for its backends), removes its directory.
extern "C" fn stop_at_exit() {
    let Some(cluster) = CLUSTER.get() else { return };
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(cluster.pid, libc::SIGQUIT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut status = 0;
        while libc::waitpid(cluster.pid, &mut status, libc::WNOHANG) == 0 {
            if Instant::now() > deadline {
                libc::kill(cluster.pid, libc::SIGKILL);
                libc::waitpid(cluster.pid, &mut status, 0);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = std::fs::remove_dir_all(&cluster.dir);
}
