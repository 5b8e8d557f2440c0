//! Starting, signalling and watching instance processes.
//!
//! Each instance runs in its own process group, so that a kill reaches
//! everything it started, with its output appended to a log file of its
//! own. A command whose program is `tandem` runs the agent's own
//! executable, so examples work from a fresh build without installing
//! anything. Children get `PR_SET_PDEATHSIG = SIGKILL`: if the agent dies,
//! its instances die with it and cannot go on acting on a role nobody
//! renews.
//!
//! The kernel sends that signal when the *thread* that forked the child
//! ends, not the process (prctl(2)). A runtime's threads come and go (a
//! worker that entered `block_in_place` becomes a blocking-pool thread and
//! ends after its idle keep-alive), so every child is forked by one
//! spawner thread that lives as long as the process ([`spawn`]).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tandem_core::model::Role;
use tandem_core::topology::{App, Host, Instance, expand, expand_all};

/// Where an agent keeps per-instance files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Directory of instance log files.
    pub logs: PathBuf,
    /// Directory of role files (for signal hooks).
    pub run: PathBuf,
}

impl Paths {
    /// Paths under an agent's data directory; creates them.
    pub fn create(data_dir: &Path) -> io::Result<Paths> {
        let p = Paths {
            logs: data_dir.join("logs"),
            run: data_dir.join("run"),
        };
        std::fs::create_dir_all(&p.logs)?;
        std::fs::create_dir_all(&p.run)?;
        Ok(p)
    }

    /// The log file of an instance.
    pub fn log_file(&self, app: &str, instance: &str) -> PathBuf {
        self.logs.join(format!("{app}.{instance}.log"))
    }

    /// The role file of an instance (`TANDEM_ROLE_FILE`).
    pub fn role_file(&self, app: &str, instance: &str) -> PathBuf {
        self.run.join(format!("{app}.{instance}.role.json"))
    }
}

/// The program to run for a command's first word: `tandem` is the running
/// executable itself.
pub fn program(first: &str) -> io::Result<PathBuf> {
    if first == "tandem" {
        std::env::current_exe()
    } else {
        Ok(PathBuf::from(first))
    }
}

/// Starts an instance's process with its role in the environment. The
/// command is prepared at once; the fork happens on the spawner thread
/// when the returned future is polled, without blocking the caller's
/// thread.
pub fn spawn(
    app: &App,
    instance: &Instance,
    host: &Host,
    role: Role,
    epoch: u64,
    paths: &Paths,
    api: Option<&str>,
) -> impl Future<Output = io::Result<tokio::process::Child>> + Send + 'static {
    let prepared = command(app, instance, host, role, epoch, paths, api);
    async move {
        let (mut cmd, first) = prepared?;
        on_spawner_thread(move || {
            cmd.spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("{first}: {e}")))
        })
        .await
    }
}

/// The command that starts an instance, and its program's name.
fn command(
    app: &App,
    instance: &Instance,
    host: &Host,
    role: Role,
    epoch: u64,
    paths: &Paths,
    api: Option<&str>,
) -> io::Result<(tokio::process::Command, String)> {
    let argv = expand_all(&app.command, app, instance, host);
    let Some((first, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let log_path = paths.log_file(&app.name, &instance.id);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log_path.display())))?;
    let mut cmd = tokio::process::Command::new(program(first)?);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    for (k, v) in &app.env {
        cmd.env(k, expand(v, app, instance, host));
    }
    cmd.env("TANDEM_APP", &app.name)
        .env("TANDEM_INSTANCE", &instance.id)
        .env("TANDEM_HOST", &host.name)
        .env("TANDEM_ROLE", role.as_str())
        .env("TANDEM_EPOCH", epoch.to_string())
        .env("TANDEM_ROLE_FILE", paths.role_file(&app.name, &instance.id));
    if let Some(api) = api {
        cmd.env("TANDEM_API", api);
    }
    if let Some(dir) = &app.workdir {
        cmd.current_dir(dir);
    }
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("agent exited during start"));
            }
            Ok(())
        });
    }
    Ok((cmd, first.clone()))
}

/// A job for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// Runs `spawn` (a fork and exec) on the spawner thread, with the caller's
/// tokio runtime entered so the child is registered with it, and returns
/// its result. Must be called from within a runtime.
async fn on_spawner_thread(
    spawn: impl FnOnce() -> io::Result<tokio::process::Child> + Send + 'static,
) -> io::Result<tokio::process::Child> {
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // The sender lives in a static and is never dropped: the thread
        // ends only with the process, so `PR_SET_PDEATHSIG` fires only then.
        std::thread::Builder::new()
            .name("tandem-spawner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map(|_| tx)
    });
    let tx = spawner
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the spawner thread: {e}")))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("no runtime to register the child with: {e}")))?;
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        let _ = reply_tx.send(spawn());
    });
    tx.send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// How a process ended, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| sig.to_string());
        format!("killed by signal {sig} ({name})")
    } else {
        format!("ended ({status})")
    }
}

/// Sends a signal to a process group (the instance and all it started).
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pgid).map_err(|_| io::Error::other("pid out of range"))?;
    killpg(Pid::from_raw(pid), signal).map_err(io::Error::from)
}

/// True if the process is stopped (frozen by SIGSTOP or a debugger).
pub fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state == 'T' || state == 't')
}
