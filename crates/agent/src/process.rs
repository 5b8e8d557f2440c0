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
//!
//! Setting the signal takes code in the child before `exec`; the standard
//! library could run it only by `fork`ing the whole agent, so instances
//! are started by [`crate::launch`] (a `posix_spawn` with that step).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::mpsc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tandem_core::model::Role;
use tandem_core::topology::{App, Host, Instance, expand, expand_all};

use crate::launch::{self, Child, Launch};

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

    /// Where an instance reports its links (`TANDEM_LINKS_DIR`): one file
    /// per link of probe `reported`, and `.active` listing the links it
    /// has active (exclusive groups).
    pub fn links_dir(&self, app: &str, instance: &str) -> PathBuf {
        self.run.join(format!("{app}.{instance}.links"))
    }

    /// The role file of an instance (`TANDEM_ROLE_FILE`).
    pub fn role_file(&self, app: &str, instance: &str) -> PathBuf {
        self.run.join(format!("{app}.{instance}.role.json"))
    }
}

/// The file in `$TANDEM_LINKS_DIR` where an instance lists the links it
/// has active, one name a line (exclusive link groups); removed before
/// each start.
pub const ACTIVE_LINKS_FILE: &str = ".active";

/// The program to run for a command's first word: `tandem` is the running
/// executable itself.
pub fn program(first: &str) -> io::Result<PathBuf> {
    if first == "tandem" {
        std::env::current_exe()
    } else {
        Ok(PathBuf::from(first))
    }
}

/// Finds `program` as `execvp` would: a path if it has a slash, else the
/// first executable of that name on `PATH`.
fn resolve(program: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        executable(program).then(|| program.to_path_buf())
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    };
    found.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// Starts an instance's process with its role in the environment. Nothing
/// happens until the returned future is polled: then a spawner thread
/// prepares the process (its log file opened, its program found) and
/// starts it, without blocking the caller's thread.
pub fn spawn(
    app: &App,
    instance: &Instance,
    host: &Host,
    role: Role,
    epoch: u64,
    paths: &Paths,
    api: Option<&str>,
) -> impl Future<Output = io::Result<Child>> + Send + 'static {
    let what = What {
        app: app.clone(),
        instance: instance.clone(),
        host: host.clone(),
        role,
        epoch,
        paths: paths.clone(),
        api: api.map(str::to_owned),
    };
    on_spawner_thread(&INSTANCES, move || start(&what))
}

/// What to start, owned, for a spawner thread.
struct What {
    app: App,
    instance: Instance,
    host: Host,
    role: Role,
    epoch: u64,
    paths: Paths,
    api: Option<String>,
}

/// Prepares and starts the process (on a spawner thread).
fn start(what: &What) -> io::Result<Child> {
    let What {
        app,
        instance,
        host,
        role,
        epoch,
        paths,
        api,
    } = what;
    let argv = expand_all(&app.command, app, instance, host);
    let Some(first) = argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let with_name = |e: io::Error| io::Error::new(e.kind(), format!("{first}: {e}"));
    let program = resolve(&program(first)?).map_err(with_name)?;
    let log_path = paths.log_file(&app.name, &instance.id);
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in &app.env {
        env.insert(k.into(), expand(v, app, instance, host).into());
    }
    let role_file = paths.role_file(&app.name, &instance.id);
    let links_dir = paths.links_dir(&app.name, &instance.id);
    std::fs::create_dir_all(&links_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", links_dir.display()),
        )
    })?;
    // A new process has no link active: what an earlier one said goes.
    let active = links_dir.join(ACTIVE_LINKS_FILE);
    match std::fs::remove_file(&active) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot remove {}: {e}", active.display()),
            ));
        }
        _ => {}
    }
    for (k, v) in [
        ("TANDEM_APP", OsString::from(&app.name)),
        ("TANDEM_INSTANCE", instance.id.clone().into()),
        ("TANDEM_HOST", host.name.clone().into()),
        ("TANDEM_ROLE", role.as_str().into()),
        ("TANDEM_EPOCH", epoch.to_string().into()),
        ("TANDEM_ROLE_FILE", role_file.into_os_string()),
        ("TANDEM_LINKS_DIR", links_dir.into_os_string()),
    ] {
        env.insert(k.into(), v);
    }
    if let Some(api) = api {
        env.insert("TANDEM_API".into(), api.into());
    }
    let cwd = app.workdir.as_ref().map(Path::new);
    launch::start(&Launch {
        program: &program,
        argv: argv.iter().map(OsStr::new).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
            .collect(),
        cwd,
        stdin: Path::new("/dev/null"),
        output: &log_path,
        kill_on_drop: false,
    })
    .map_err(with_name)
}

/// Starts a helper command of an instance (a role hook, an exec health
/// check): `argv` with `env` added to the agent's environment, no stdin,
/// no output, killed if its [`Child`] is dropped (a timeout). Like an
/// instance, it is started by a spawner thread and dies with the agent.
pub fn spawn_helper(
    argv: Vec<String>,
    env: Vec<(String, String)>,
) -> impl Future<Output = io::Result<Child>> + Send + 'static {
    spawn_helper_to(argv, env, PathBuf::from("/dev/null"))
}

/// [`spawn_helper`], its output (stdout and stderr) appended to `output`.
pub fn spawn_helper_to(
    argv: Vec<String>,
    env: Vec<(String, String)>,
    output: PathBuf,
) -> impl Future<Output = io::Result<Child>> + Send + 'static {
    on_spawner_thread(&HELPERS, move || {
        let Some(first) = argv.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let with_name = |e: io::Error| io::Error::new(e.kind(), format!("{first}: {e}"));
        let program = resolve(&program(first)?).map_err(with_name)?;
        let mut all: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        all.extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
        launch::start(&Launch {
            program: &program,
            argv: argv.iter().map(OsStr::new).collect(),
            env: all
                .iter()
                .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
                .collect(),
            cwd: None,
            stdin: Path::new("/dev/null"),
            output: &output,
            kill_on_drop: true,
        })
        .map_err(with_name)
    })
}

/// A job for a spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// A set of spawner threads, each living as long as the process.
struct Pool {
    name: &'static str,
    threads: usize,
    jobs: OnceLock<io::Result<mpsc::Sender<Job>>>,
}

/// Starts instances: a few threads, so a burst starts in parallel.
static INSTANCES: Pool = Pool {
    name: "tandem-spawner",
    threads: 4,
    jobs: OnceLock::new(),
};

/// Starts role hooks and exec checks, which are on the failover path and
/// have a timeout: never queued behind a burst of instance starts.
static HELPERS: Pool = Pool {
    name: "tandem-hooks",
    threads: 2,
    jobs: OnceLock::new(),
};

impl Pool {
    /// Its job queue, starting its threads the first time. The sender
    /// lives in a static and is never dropped: the threads end only with
    /// the process, so `PR_SET_PDEATHSIG` fires only then.
    fn jobs(&'static self) -> io::Result<&'static mpsc::Sender<Job>> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
            for n in 0..self.threads {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("{}-{n}", self.name))
                    .spawn(move || {
                        loop {
                            let job = {
                                let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                                rx.recv()
                            };
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })?;
            }
            Ok(tx)
        });
        jobs.as_ref()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start the spawner threads: {e}")))
    }
}

/// Runs `spawn` (a fork and exec) on one of `pool`'s threads, with the
/// caller's tokio runtime entered so the child is registered with it, and
/// returns its result. Must be called from within a runtime.
async fn on_spawner_thread(
    pool: &'static Pool,
    spawn: impl FnOnce() -> io::Result<Child> + Send + 'static,
) -> io::Result<Child> {
    let tx = pool.jobs()?;
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
