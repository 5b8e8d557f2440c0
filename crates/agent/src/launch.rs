//! Starting an instance's process the way `posix_spawn` does, with one
//! step more: the child asks to be killed when its parent thread ends
//! (`PR_SET_PDEATHSIG`), so that an agent's instances die with it.
//!
//! The standard library can run code in the child only by `fork`ing the
//! whole agent, whose cost grows with its memory (milliseconds for an agent
//! of tens of MiB: seconds for a burst of a thousand instances). Here the
//! child is created by `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//! `posix_spawn` does: it runs on a stack of its own in the parent's
//! memory, the calling thread waits until it has called `execve`, and it
//! makes only async-signal-safe system calls on data prepared beforehand
//! (no allocation, no lock). Its exit is awaited through a pidfd.
//!
//! The child also shares the agent's file descriptor table at first
//! (`CLONE_FILES`) and then takes a private copy of only fds 0–2
//! (`close_range(3, ~0, CLOSE_RANGE_UNSHARE)`, Linux 5.9) before opening its
//! own stdin and output: an agent watching thousands of processes holds
//! thousands of pidfds, and copying them into every child, then closing
//! them at `exec`, made each start cost milliseconds.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// What a child needs to become the program.
pub struct Launch<'a> {
    /// The program, resolved (a path).
    pub program: &'a Path,
    /// Its arguments, the program's name first.
    pub argv: Vec<&'a OsStr>,
    /// Its whole environment.
    pub env: Vec<(&'a OsStr, &'a OsStr)>,
    /// Its working directory, if not the agent's.
    pub cwd: Option<&'a Path>,
    /// Opened (read-only) as its stdin.
    pub stdin: &'a Path,
    /// Opened (appending, created if missing) as its stdout and stderr.
    pub output: &'a Path,
    /// Kill it (SIGKILL) if the [`Child`] is dropped before it was reaped.
    pub kill_on_drop: bool,
}

/// A started process, the leader of its own process group.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    kill_on_drop: bool,
}

/// What the child was doing when it failed.
const STAGES: [&str; 6] = [
    "",
    "cannot set its parent-death signal",
    "cannot open its stdin",
    "cannot open its output",
    "cannot set it up",
    "cannot change to its directory",
];

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// Everything the child reads, as raw pointers prepared in the parent.
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: *const libc::c_char,
    output: *const libc::c_char,
    parent: libc::pid_t,
    /// The highest signal number.
    sigmax: libc::c_int,
    /// Where the child writes the errno of what failed.
    error: *mut libc::c_int,
    /// Where the child writes what it was doing (an index of STAGES, or
    /// STAGES.len() for exec).
    stage: *mut libc::c_int,
}

/// The child, between clone and execve: only async-signal-safe calls.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs the parent keeps alive until
    // this child has exec'd or exited (CLONE_VFORK); every pointer in it
    // was built from live CStrings and null-terminated arrays. Until the
    // fd table is unshared, nothing here changes it (CLONE_FILES).
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |a: &ChildArgs, stage: libc::c_int| -> libc::c_int {
            *a.error = *libc::__errno_location();
            *a.stage = stage;
            libc::_exit(127)
        };
        // The parent's handlers are not the program's: back to defaults
        // (the runtime ignores SIGPIPE and handles SIGCHLD).
        for sig in 1..=a.sigmax {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail(a, 1);
        }
        // The agent may have died before the signal was set.
        if libc::getppid() != a.parent {
            *a.error = libc::ESRCH;
            *a.stage = 1;
            libc::_exit(127);
        }
        // A table of its own, with only fds 0-2 copied.
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) != 0
        {
            return fail(a, 4);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(a, 4);
        }
        let fd = libc::open(a.stdin, libc::O_RDONLY);
        if fd < 0 || libc::dup2(fd, 0) < 0 {
            return fail(a, 2);
        }
        if fd > 2 {
            libc::close(fd);
        }
        let fd = libc::open(
            a.output,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            0o666 as libc::c_uint,
        );
        if fd < 0 || libc::dup2(fd, 1) < 0 || libc::dup2(fd, 2) < 0 {
            return fail(a, 3);
        }
        if fd > 2 {
            libc::close(fd);
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            return fail(a, 5);
        }
        libc::execve(a.program, a.argv, a.envp);
        fail(a, STAGES.len() as libc::c_int)
    }
}

/// Starts `launch` and returns the running child. Must be called from
/// within a tokio runtime (the pidfd is registered with it).
pub fn start(launch: &Launch<'_>) -> io::Result<Child> {
    let program = cstring(launch.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = launch
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let env: Vec<CString> = launch
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<io::Result<_>>()?;
    let cwd = launch
        .cwd
        .map(|c| cstring(c.as_os_str().as_bytes()))
        .transpose()?;
    let stdin = cstring(launch.stdin.as_os_str().as_bytes())?;
    let output = cstring(launch.output.as_os_str().as_bytes())?;
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let env_ptrs: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut error: libc::c_int = 0;
    let mut stage: libc::c_int = 0;
    let args = ChildArgs {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdin: stdin.as_ptr(),
        output: output.as_ptr(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        sigmax: libc::SIGRTMAX(),
        error: &mut error,
        stage: &mut stage,
    };
    // The child's stack, 16-byte aligned at its top (stacks grow down).
    const STACK_BYTES: usize = 64 * 1024;
    let mut stack = vec![0u128; STACK_BYTES / 16];
    // SAFETY: the stack outlives the child's use of it (the parent waits,
    // CLONE_VFORK); signals are blocked around clone so that no handler of
    // the parent runs on the child's stack before it resets them.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    if error != 0 {
        // It exited without exec: reap it and say why.
        // SAFETY: pid is our child.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        let e = io::Error::from_raw_os_error(error);
        let what = match STAGES.get(stage as usize) {
            Some(&"cannot open its output") => {
                format!("cannot open {}", launch.output.display())
            }
            Some(&"cannot change to its directory") => format!(
                "cannot change to {}",
                launch.cwd.map_or("?".into(), |c| c.display().to_string())
            ),
            Some(stage) if !stage.is_empty() => (*stage).to_string(),
            _ => return Err(e),
        };
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    // SAFETY: pidfd_open takes a pid and flags; a negative result is an
    // error, anything else a new descriptor we own (always close-on-exec).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_long) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // Cannot watch it: do not leave it running unwatched.
        // SAFETY: pid is our child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(e);
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the OwnedFd is a valid open pidfd that the AsyncFd owns and
    // never replaces.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    Ok(Child {
        pid: pid as u32,
        pidfd,
        status: None,
        kill_on_drop: launch.kill_on_drop,
    })
}

impl Child {
    /// Its pid (and process group).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Reaps it if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut status = 0;
        // SAFETY: our own child; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r < 0 => Err(io::Error::last_os_error()),
            _ => {
                self.status = Some(ExitStatus::from_raw(status));
                Ok(self.status)
            }
        }
    }

    /// Waits for it to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            // The pidfd becomes readable when the process exits.
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Sends it SIGKILL (if it has not been reaped yet).
    pub fn start_kill(&mut self) {
        if self.status.is_none() {
            // SAFETY: our own child, not yet reaped (its pid is not reused).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }

    /// Sends it SIGKILL and reaps it.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.start_kill();
        self.wait().await
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.kill_on_drop && matches!(self.try_wait(), Ok(None)) {
            self.start_kill();
            // Reaped when it exits: nothing waits for it any more, so wait
            // here (SIGKILL is immediate).
            // SAFETY: our own child.
            unsafe {
                let mut status = 0;
                libc::waitpid(self.pid as libc::pid_t, &mut status, 0);
            }
        }
    }
}
