//! End-to-end tests of pool dispatch: real builder worker processes
//! (`tandem_demo::pool`), real HTTP, real SIGKILL.
//!
//! # How the workers are started
//!
//! Cargo builds the binaries of a dependency only for that package's own
//! tests, so this test cannot rely on `tandem-demo-builder` being built.
//! Instead this test binary is its own builder: it runs itself again
//! (`std::env::current_exe()`) with only the `builder_process` test
//! selected and `TANDEM_POOL_TEST_BUILDER` set, and that "test" then runs
//! `tandem_demo::pool::run_builder` (a dev-dependency) until killed. Each
//! worker is thus a separate OS process that SIGKILL really kills, with no
//! dependence on build order or on a second `cargo` run. A worker exits
//! by itself when its stdin closes, so none outlives a crashed test run.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_client::pool::{
    AttemptOutcome, DispatchError, DispatchOptions, Dispatcher, Done, Job, Worker, WorkerSource,
};

/// Set in a worker process: `instance|build_ms|port|journal`.
const CHILD_ENV: &str = "TANDEM_POOL_TEST_BUILDER";

/// Not a test: the body of a builder worker process started by [`Proc`].
/// Does nothing in a normal test run.
#[test]
fn builder_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.splitn(4, '|').collect();
    let [instance, build_ms, port, journal] = fields[..] else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let args = tandem_demo::pool::BuilderArgs {
        port: port.parse().expect("port in the worker spec"),
        bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        app: "builder".to_owned(),
        instance: instance.to_owned(),
        journal: Some(PathBuf::from(journal)),
        build_ms: build_ms.parse().expect("build_ms in the worker spec"),
    };
    // The test that started this worker is gone: stop.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match runtime.block_on(tandem_demo::pool::run_builder(args)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("builder failed: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

/// One builder worker process, killed when dropped.
struct Proc {
    instance: String,
    port: u16,
    build_ms: u64,
    journal: PathBuf,
    stderr: PathBuf,
    child: Child,
    _stdin: ChildStdin,
}

impl Proc {
    /// Starts worker `instance` on `port` (0: any), journaling to `journal`.
    fn start(instance: &str, port: u16, build_ms: u64, journal: &Path) -> Proc {
        let exe = std::env::current_exe().expect("path of this test binary");
        let stderr_path = journal.with_extension(format!("{instance}.stderr"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("create stderr log");
        let spec = format!("{instance}|{build_ms}|{port}|{}", journal.display());
        let mut child = Command::new(exe)
            .args([
                "builder_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start a builder worker process");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // libtest prints its own lines first; keep draining afterwards.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| {
                panic!(
                    "worker {instance} did not start ({e}); stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            });
        // "builder builder/a listening on 127.0.0.1:PORT (build N ms)"
        // (after libtest's own "test builder_process ... ", on the same line)
        let port = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in startup line {line:?}"));
        Proc {
            instance: instance.to_owned(),
            port,
            build_ms,
            journal: journal.to_owned(),
            stderr: stderr_path,
            child,
            _stdin: stdin,
        }
    }

    fn worker(&self) -> Worker {
        Worker::new(
            self.instance.clone(),
            format!("http://127.0.0.1:{}", self.port),
        )
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pool of worker processes with their journals in one directory.
struct Pool {
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Pool {
    /// Workers `a`, `b`, `c`, ... each building for `build_ms`.
    fn start(count: usize, build_ms: u64) -> Pool {
        let dir = tempfile::tempdir().expect("tempdir");
        let procs = (0..count)
            .map(|n| {
                let instance = char::from(b'a' + u8::try_from(n).expect("few workers")).to_string();
                let journal = dir.path().join(format!("{instance}.jsonl"));
                Proc::start(&instance, 0, build_ms, &journal)
            })
            .collect();
        Pool { procs, _dir: dir }
    }

    fn workers(&self) -> Vec<Worker> {
        self.procs.iter().map(Proc::worker).collect()
    }

    fn proc(&mut self, instance: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.instance == instance)
            .unwrap_or_else(|| panic!("no worker {instance}"))
    }

    /// Starts worker `instance` again on its port, with the same journal.
    fn restart(&mut self, instance: &str) {
        let proc = self.proc(instance);
        let (port, build_ms, journal) = (proc.port, proc.build_ms, proc.journal.clone());
        *proc = Proc::start(instance, port, build_ms, &journal);
    }

    /// Every journal line of every worker: (instance, line).
    fn journal_lines(&self) -> Vec<(String, Value)> {
        let mut lines = Vec::new();
        for proc in &self.procs {
            lines.extend(
                read_journal(&proc.journal)
                    .into_iter()
                    .map(|l| (proc.instance.clone(), l)),
            );
        }
        lines
    }

    /// `build-done` lines per job id, over all journals.
    fn builds_done(&self) -> BTreeMap<String, usize> {
        let mut done = BTreeMap::new();
        for (_, line) in self.journal_lines() {
            if line["event"] == "build-done" {
                let job = line["job"].as_str().unwrap_or("<none>").to_owned();
                *done.entry(job).or_insert(0) += 1;
            }
        }
        done
    }

    /// The worker whose journal has `build-started` for `job`, waiting up
    /// to 10 s for it.
    async fn wait_build_started(&self, job: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .journal_lines()
                .into_iter()
                .find(|(_, l)| l["event"] == "build-started" && l["job"] == job);
            if let Some((instance, _)) = found {
                return instance;
            }
            assert!(Instant::now() < deadline, "job {job} never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stderr_text(&self) -> String {
        let mut text = String::new();
        for proc in &self.procs {
            text.push_str(&format!(
                "--- {}:\n{}\n",
                proc.instance,
                std::fs::read_to_string(&proc.stderr).unwrap_or_default()
            ));
        }
        text
    }
}

/// A journal's complete lines (a line cut by SIGKILL would be skipped, but
/// a line is written in one `write`, so there is none).
fn read_journal(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
        .collect()
}

/// Options for tests: quick polls, bounded waits.
fn options(timeout: Duration) -> DispatchOptions {
    DispatchOptions {
        alive_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        timeout,
        max_rounds: 10_000,
        lost_after: 3,
    }
}

/// Sends a job straight to a worker, as another dispatcher would.
async fn occupy(worker: &Worker, id: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{}/jobs", worker.base_url))
        .json(&serde_json::json!({ "id": id, "payload": "other" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /jobs to {worker}: {e}"));
    assert_eq!(answer.status().as_u16(), 202, "{worker} did not take {id}");
}

/// A port where nothing listens (bound, then released).
fn dead_worker() -> Worker {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    Worker::new("dead", format!("http://127.0.0.1:{port}"))
}

fn names(workers: &[Worker]) -> HashSet<String> {
    workers.iter().map(|w| w.instance.clone()).collect()
}

/// Runs `jobs` concurrently on `dispatcher`, each in its own task.
async fn run_all(dispatcher: &Dispatcher, jobs: Vec<Job>) -> Vec<Result<Done, DispatchError>> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { dispatcher.run(job).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("dispatch task panicked"));
    }
    results
}

fn expect_done(result: Result<Done, DispatchError>, pool: &Pool) -> Done {
    result.unwrap_or_else(|e| panic!("dispatch failed: {e}\n{}", pool.stderr_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn is_alive_round_returns_only_free_workers() {
    let pool = Pool::start(3, 30_000);
    let workers = pool.workers();
    occupy(&workers[1], "x1").await;
    let mut listed = workers.clone();
    listed.push(dead_worker());
    let dispatcher = Dispatcher::new(
        WorkerSource::Static(listed),
        options(Duration::from_secs(5)),
    );

    let free = dispatcher.free_workers().await.expect("IS ALIVE round");
    assert_eq!(names(&free), HashSet::from(["a".into(), "c".into()]));

    let round = dispatcher.alive_round().await.expect("IS ALIVE round");
    assert_eq!(round.asked(), 4);
    assert_eq!(names(&round.free), HashSet::from(["a".into(), "c".into()]));
    assert_eq!(names(&round.busy), HashSet::from(["b".into()]));
    assert_eq!(round.dead.len(), 1);
    assert_eq!(round.dead[0].0.instance, "dead");
    assert!(
        round.dead[0].1.contains("connection refused"),
        "{}",
        round.dead[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_jobs_across_three_workers_are_each_built_once() {
    let pool = Pool::start(3, 300);
    let dispatcher = Dispatcher::new(
        WorkerSource::Static(pool.workers()),
        options(Duration::from_secs(30)),
    );
    let jobs: Vec<Job> = (1..=5)
        .map(|n| Job::new(format!("j{n}"), format!("payload {n}")))
        .collect();
    let results = run_all(&dispatcher, jobs).await;

    let mut used = HashSet::new();
    for (n, result) in results.into_iter().enumerate() {
        let done = expect_done(result, &pool);
        assert_eq!(done.id, format!("j{}", n + 1));
        assert!(done.result.starts_with("built 9 bytes"), "{}", done.result);
        assert_eq!(
            done.attempts.last().map(|a| &a.outcome),
            Some(&AttemptOutcome::Built)
        );
        assert!(done.dispatch_latency().is_some());
        used.insert(done.worker);
    }
    assert_eq!(used.len(), 3, "every worker took a job: {used:?}");
    let expected: BTreeMap<String, usize> = (1..=5).map(|n| (format!("j{n}"), 1)).collect();
    assert_eq!(pool.builds_done(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_worker_of_a_running_job_rebuilds_it_elsewhere_exactly_once() {
    let mut pool = Pool::start(3, 1500);
    let dispatcher = Dispatcher::new(
        WorkerSource::Static(pool.workers()),
        options(Duration::from_secs(30)),
    );
    let runs = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            run_all(
                &dispatcher,
                vec![Job::new("victim", "v"), Job::new("bystander", "b")],
            )
            .await
        })
    };
    let killed = pool.wait_build_started("victim").await;
    pool.wait_build_started("bystander").await;
    pool.proc(&killed).kill9();

    let mut results = runs.await.expect("dispatch task panicked").into_iter();
    let victim = expect_done(results.next().expect("victim result"), &pool);
    let bystander = expect_done(results.next().expect("bystander result"), &pool);

    assert_ne!(victim.worker, killed, "{victim:?}");
    assert_ne!(bystander.worker, killed, "{bystander:?}");
    let outcomes: Vec<&AttemptOutcome> = victim.attempts.iter().map(|a| &a.outcome).collect();
    assert!(
        matches!(
            outcomes[..],
            [AttemptOutcome::Lost { .. }, AttemptOutcome::Built]
        ),
        "{outcomes:?}"
    );
    assert_eq!(victim.attempts[0].worker, killed);
    assert!(victim.rounds >= 2, "{victim:?}");

    let expected = BTreeMap::from([("bystander".to_owned(), 1), ("victim".to_owned(), 1)]);
    assert_eq!(pool.builds_done(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_restarted_mid_job_answers_404_and_the_job_is_sent_again() {
    let mut pool = Pool::start(1, 1000);
    // Only the 404 of the restarted worker may count as losing the job.
    let mut opts = options(Duration::from_secs(30));
    opts.lost_after = 1000;
    let dispatcher = Dispatcher::new(WorkerSource::Static(pool.workers()), opts);
    let run = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.run(Job::new("j1", "p")).await })
    };
    pool.wait_build_started("j1").await;
    pool.proc("a").kill9();
    pool.restart("a");

    let done = expect_done(run.await.expect("dispatch task panicked"), &pool);
    let outcomes: Vec<&AttemptOutcome> = done.attempts.iter().map(|a| &a.outcome).collect();
    match outcomes[..] {
        [AttemptOutcome::Lost { reason }, AttemptOutcome::Built] => {
            assert!(reason.contains("restarted"), "{reason}");
        }
        _ => panic!("{outcomes:?}"),
    }
    assert_eq!(pool.builds_done(), BTreeMap::from([("j1".to_owned(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_all_workers_are_busy_dispatch_waits_until_one_frees() {
    let pool = Pool::start(2, 800);
    let workers = pool.workers();
    occupy(&workers[0], "x1").await;
    occupy(&workers[1], "x2").await;
    let dispatcher = Dispatcher::new(
        WorkerSource::Static(workers),
        options(Duration::from_secs(30)),
    );

    let done = expect_done(dispatcher.run(Job::new("j1", "p")).await, &pool);
    assert!(done.rounds >= 2, "the first round found no free worker");
    assert_eq!(done.attempts.len(), 1, "{:?}", done.attempts);
    // On its worker, j1 started only after that worker's own job was done.
    let events: Vec<(String, String)> = pool
        .journal_lines()
        .into_iter()
        .filter(|(instance, _)| *instance == done.worker)
        .map(|(_, l)| {
            (
                l["event"].as_str().unwrap_or_default().to_owned(),
                l["job"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .filter(|(event, _)| event.starts_with("build"))
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[1].0, "build-done");
    assert_eq!(events[2], ("build-started".to_owned(), "j1".to_owned()));
    let built = pool.builds_done();
    assert_eq!(built.get("j1"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_free_worker_is_a_clear_error_after_the_timeout() {
    let timeout = Duration::from_millis(400);

    let empty = Dispatcher::new(WorkerSource::Static(vec![]), options(timeout));
    let started = Instant::now();
    let err = empty.run(Job::new("j1", "p")).await.err();
    assert!(started.elapsed() >= timeout);
    match &err {
        Some(DispatchError::NoFreeWorker {
            asked: 0,
            busy: 0,
            dead: 0,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.starts_with("no free worker for job j1 after "),
        "{message}"
    );
    assert!(message.ends_with("the pool has no workers"), "{message}");

    let dead = Dispatcher::new(WorkerSource::Static(vec![dead_worker()]), options(timeout));
    match dead.run(Job::new("j1", "p")).await {
        Err(DispatchError::NoFreeWorker {
            asked: 1,
            busy: 0,
            dead: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }

    let pool = Pool::start(1, 30_000);
    occupy(&pool.workers()[0], "x1").await;
    let busy = Dispatcher::new(WorkerSource::Static(pool.workers()), options(timeout));
    match busy.run(Job::new("j1", "p")).await {
        Err(
            e @ DispatchError::NoFreeWorker {
                asked: 1,
                busy: 1,
                dead: 0,
                ..
            },
        ) => assert!(
            e.to_string()
                .ends_with("asked 1 workers, 1 busy, 0 did not answer"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dispatches_never_share_a_worker_and_409_is_handled() {
    let pool = Pool::start(2, 200);
    // Two dispatchers that know nothing of each other: they race for the
    // same free workers and the workers settle it with 409.
    let first = Dispatcher::new(
        WorkerSource::Static(pool.workers()),
        options(Duration::from_secs(30)),
    );
    let second = Dispatcher::new(
        WorkerSource::Static(pool.workers()),
        options(Duration::from_secs(30)),
    );
    let jobs = |prefix: &str| -> Vec<Job> {
        (1..=3)
            .map(|n| Job::new(format!("{prefix}{n}"), "p"))
            .collect()
    };
    let (one, two) = tokio::join!(run_all(&first, jobs("p")), run_all(&second, jobs("q")));

    let mut conflicts = 0;
    for result in one.into_iter().chain(two) {
        let done = expect_done(result, &pool);
        conflicts += done
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Busy { .. }))
            .count();
    }
    eprintln!("409 answers handled: {conflicts}");

    // Each worker built one job at a time: start, done, start, done...
    for proc in &pool.procs {
        let lines = read_journal(&proc.journal);
        let builds: Vec<&Value> = lines
            .iter()
            .filter(|l| l["event"].as_str().is_some_and(|e| e.starts_with("build")))
            .collect();
        for pair in builds.chunks(2) {
            assert!(
                matches!(pair, [s, d] if s["event"] == "build-started"
                    && d["event"] == "build-done"
                    && s["job"] == d["job"]),
                "worker {} interleaved jobs: {builds:?}",
                proc.instance
            );
        }
    }
    let expected: BTreeMap<String, usize> = ["p1", "p2", "p3", "q1", "q2", "q3"]
        .into_iter()
        .map(|id| (id.to_owned(), 1))
        .collect();
    assert_eq!(pool.builds_done(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatching_a_built_id_again_is_answered_from_memory() {
    let pool = Pool::start(1, 100);
    let dispatcher = Dispatcher::new(
        WorkerSource::Static(pool.workers()),
        options(Duration::from_secs(30)),
    );
    let first = expect_done(dispatcher.run(Job::new("j1", "p")).await, &pool);
    let again = expect_done(dispatcher.run(Job::new("j1", "p")).await, &pool);
    assert_eq!(again.result, first.result);
    assert_eq!(
        again.attempts.last().map(|a| &a.outcome),
        Some(&AttemptOutcome::AlreadyBuilt)
    );
    assert_eq!(pool.builds_done(), BTreeMap::from([("j1".to_owned(), 1)]));
}
