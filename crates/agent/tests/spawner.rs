//! Children must die with their agent and only with it: the kernel sends
//! `PR_SET_PDEATHSIG` when the *thread* that forked a child ends, and a
//! tokio runtime ends idle threads (blocking-pool threads, and workers
//! that entered `block_in_place`, as the embedded store does) after their
//! keep-alive.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use tandem_agent::process::{Paths, spawn};
use tandem_core::model::Role;

const TOPOLOGY: &str = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[apps.s]
ha = "none"
command = ["sleep", "600"]

[[apps.s.instances]]
id = "a"
host = "h1"
"#;

#[test]
fn children_outlive_the_runtime_threads_that_forked_them() {
    let keep_alive = Duration::from_millis(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(keep_alive)
        .enable_all()
        .build()
        .expect("runtime");
    let topology = tandem_core::topology::parse("t.toml", TOPOLOGY).expect("topology");
    let app = topology.app("s").expect("app").clone();
    let instance = app.instances[0].clone();
    let host = topology.host("h1").expect("host").clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths::create(dir.path()).expect("paths");

    runtime.block_on(async {
        let mut children = Vec::new();
        // Bursts of starts, each from a thread of the blocking pool and
        // from a worker inside block_in_place: both kinds of thread end
        // once idle for the keep-alive.
        for _ in 0..4 {
            let (a, i, h, p) = (app.clone(), instance.clone(), host.clone(), paths.clone());
            let burst = tokio::task::spawn_blocking(move || {
                (0..5)
                    .map(|_| {
                        let start = spawn(&a, &i, &h, Role::Active, 0, &p, None);
                        tokio::runtime::Handle::current().block_on(start)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("blocking task");
            children.extend(burst.into_iter().map(|c| c.expect("spawn")));
            let (a, i, h, p) = (app.clone(), instance.clone(), host.clone(), paths.clone());
            let burst = tokio::spawn(async move {
                tokio::task::block_in_place(|| {
                    (0..5)
                        .map(|_| {
                            let start = spawn(&a, &i, &h, Role::Active, 0, &p, None);
                            tokio::runtime::Handle::current().block_on(start)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await
            .expect("block_in_place task");
            children.extend(burst.into_iter().map(|c| c.expect("spawn")));
        }
        // Well past the keep-alive: the threads that forked them are gone.
        let until = Instant::now() + keep_alive * 15;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for child in &mut children {
                let exited = child.try_wait().expect("try_wait");
                assert!(
                    exited.is_none(),
                    "a child nothing faulted exited: {exited:?} (pid {:?})",
                    child.id()
                );
            }
        }
        for child in &mut children {
            child.kill().await.expect("kill");
        }
    });
}

mod launch {
    use std::ffi::OsStr;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use tandem_agent::launch::{Child, Launch, start};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Starts `argv` with `env`, in `cwd`, its output into `out`.
    fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
        out: &Path,
    ) -> std::io::Result<Child> {
        start(&Launch {
            program: Path::new(argv[0]),
            argv: argv.iter().map(OsStr::new).collect(),
            env: env
                .iter()
                .map(|(k, v)| (OsStr::new(k), OsStr::new(v)))
                .collect(),
            cwd,
            stdin: Path::new("/dev/null"),
            output: out,
            kill_on_drop: false,
        })
    }

    #[test]
    fn a_child_inherits_no_descriptor_but_its_stdio() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        // 200 descriptors open in the agent, without close-on-exec: a
        // plain fork and exec would hand them all to the child.
        let leaked: Vec<i32> = (0..200)
            .map(|_| {
                // SAFETY: open with a valid C string; closed below.
                let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
                assert!(fd >= 0);
                fd
            })
            .collect();
        rt.block_on(async {
            let mut child = run(&["/bin/ls", "/proc/self/fd"], &[], None, &out).expect("start");
            assert!(child.wait().await.expect("wait").success());
        });
        for fd in leaked {
            // SAFETY: our own descriptors.
            unsafe { libc::close(fd) };
        }
        let text = std::fs::read_to_string(&out).expect("read");
        let fds: Vec<&str> = text.lines().collect();
        // 0, 1, 2, and the directory ls reads.
        assert!(
            fds.len() <= 4,
            "the child had {} descriptors: {fds:?}",
            fds.len()
        );
        for std in ["0", "1", "2"] {
            assert!(fds.contains(&std), "{fds:?}");
        }
    }

    #[test]
    fn an_output_that_cannot_be_opened_fails_the_start_and_says_which() {
        let rt = runtime();
        rt.block_on(async {
            let err = run(&["/bin/true"], &[], None, Path::new("/nonexistent/dir/out"))
                .expect_err("must fail");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
            assert!(err.to_string().contains("/nonexistent/dir/out"), "{err}");
        });
    }

    #[test]
    fn a_child_gets_its_environment_directory_output_group_and_default_signals() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        rt.block_on(async {
            let script = "echo \"$FOO\"; pwd; ps -o pgid= -p $$ | tr -d ' '; echo $$; \
                          grep -E '^Sig(Blk|Ign)' /proc/self/status; exit 3";
            let mut child = run(
                &["/bin/sh", "-c", script],
                &[("FOO", "bar"), ("PATH", "/usr/bin:/bin")],
                Some(Path::new("/tmp")),
                &out,
            )
            .expect("start");
            let status = child.wait().await.expect("wait");
            assert_eq!(status.code(), Some(3));
            let text = std::fs::read_to_string(&out).expect("read");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines[0], "bar", "{text}");
            assert_eq!(lines[1], "/tmp", "{text}");
            assert_eq!(lines[2], lines[3], "its own process group: {text}");
            assert_eq!(lines[3], child.id().to_string());
            // Nothing blocked; no standard signal ignored (the runtime
            // ignores SIGPIPE; glibc's own 32 and 33 do not matter).
            let ignored = lines[5].strip_prefix("SigIgn:\t").expect("SigIgn");
            let ignored = u64::from_str_radix(ignored, 16).expect("hex");
            assert_eq!(ignored & 0x7fff_ffff, 0, "{text}");
            assert_eq!(lines[4], "SigBlk:\t0000000000000000", "{text}");
        });
    }

    #[test]
    fn a_missing_program_fails_the_start_and_a_kill_is_reported() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        rt.block_on(async {
            let err = run(&["/nonexistent/program"], &[], None, &out).expect_err("must fail");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
            let mut child = run(&["/bin/sleep", "60"], &[], None, &out).expect("start");
            assert!(child.try_wait().expect("try_wait").is_none());
            let status = child.kill().await.expect("kill");
            assert_eq!(status.signal(), Some(9));
        });
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let handle = rt.handle().clone();
        let pid = std::thread::spawn(move || {
            let _entered = handle.enter();
            let child = run(&["/bin/sleep", "60"], &[], None, &out).expect("start");
            let pid = child.id();
            std::mem::forget(child);
            pid
        })
        .join()
        .expect("thread");
        // The thread has ended: the kernel kills the child (PR_SET_PDEATHSIG).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            if matches!(state, None | Some('Z')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the child outlived the thread that started it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap it.
        // SAFETY: waitpid on our own child.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid as i32, &mut status, 0);
        }
    }
}
