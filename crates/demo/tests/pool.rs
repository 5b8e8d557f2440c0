//! End-to-end tests of the builder worker (`tandem-demo-builder`): a real
//! process, real HTTP, real signals.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Answer, REQUEST_TIMEOUT, read_journal, request};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A running builder worker, killed when dropped.
struct Worker {
    child: Child,
    port: u16,
    journal: PathBuf,
    stderr: PathBuf,
    startup_line: String,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Starts worker `instance` of app `builder` on a free port.
    fn start(instance: &str, build_ms: u64) -> Worker {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal.jsonl");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-demo-builder"))
            .env_remove("TANDEM_APP")
            .env("TANDEM_INSTANCE", instance)
            .args(["--port", "0", "--build-ms", &build_ms.to_string()])
            .arg("--journal")
            .arg(&journal)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn tandem-demo-builder");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut worker = Worker {
            child,
            port: 0,
            journal,
            stderr: stderr_path,
            startup_line: String::new(),
            _dir: dir,
        };
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("listening on") => line,
            other => panic!(
                "builder did not start: {other:?}\nstderr:\n{}",
                worker.stderr_text()
            ),
        };
        // "builder builder/a listening on 127.0.0.1:PORT (build N ms)"
        worker.port = line
            .split_whitespace()
            .nth(4)
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in startup line {line:?}"));
        worker.startup_line = line;
        worker
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Answer {
        request(self.port, "GET", path, None, REQUEST_TIMEOUT)
            .unwrap_or_else(|err| panic!("GET {path}: {err}\nstderr:\n{}", self.stderr_text()))
    }

    fn post(&self, path: &str, body: &str) -> Answer {
        request(self.port, "POST", path, Some(body), REQUEST_TIMEOUT)
            .unwrap_or_else(|err| panic!("POST {path}: {err}\nstderr:\n{}", self.stderr_text()))
    }

    fn submit(&self, id: &str, payload: &str) -> Answer {
        let body = serde_json::json!({ "id": id, "payload": payload }).to_string();
        self.post("/jobs", &body)
    }

    /// Polls `GET /jobs/{id}` until it is done (bounded).
    fn wait_done(&self, id: &str) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.get(&format!("/jobs/{id}"));
            if answer.body["state"] == "done" {
                return answer;
            }
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn journal_lines(&self) -> Vec<Value> {
        read_journal(&self.journal)
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("send signal");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(event, job)` of each journal line.
fn events(lines: &[Value]) -> Vec<(String, Option<String>)> {
    lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap_or("<none>").to_owned(),
                l["job"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn ev(event: &str, job: Option<&str>) -> (String, Option<String>) {
    (event.to_owned(), job.map(str::to_owned))
}

#[test]
fn startup_line_names_the_worker_and_its_build_time() {
    let worker = Worker::start("a", 3000);
    assert!(
        worker
            .startup_line
            .starts_with("builder builder/a listening on 127.0.0.1:"),
        "{}",
        worker.startup_line
    );
    assert!(
        worker.startup_line.trim_end().ends_with("(build 3000 ms)"),
        "{}",
        worker.startup_line
    );
    let root = worker.get("/");
    assert_eq!(root.body["instance"], "a");
    assert_eq!(root.body["busy"], false);
}

#[test]
fn is_alive_answers_200_when_free_and_503_while_building() {
    let worker = Worker::start("a", 60_000);
    let alive = worker.get("/alive");
    assert_eq!(alive.status, 200, "{:?}", alive.body);
    assert_eq!(alive.body["instance"], "a");
    assert_eq!(alive.body["free"], true);
    let health = worker.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body["busy"], false);
    assert_eq!(health.body["job"], Value::Null);

    let answer = worker.submit("j1", "source");
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["state"], "running");

    let alive = worker.get("/alive");
    assert_eq!(alive.status, 503, "{:?}", alive.body);
    assert_eq!(alive.body["free"], false);
    assert_eq!(alive.body["job"], "j1");
    // Health stays 200: a busy worker is working, not failing.
    let health = worker.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["busy"], true);
    assert_eq!(health.body["job"], "j1");
}

#[test]
fn job_completes_after_build_ms_and_frees_the_worker() {
    let worker = Worker::start("a", 300);
    let started = Instant::now();
    assert_eq!(worker.submit("j1", "abc").status, 202);
    let running = worker.get("/jobs/j1");
    assert_eq!(running.status, 200);
    assert_eq!(running.body["state"], "running");
    let done = worker.wait_done("j1");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(done.body["id"], "j1");
    assert_eq!(done.body["instance"], "a");
    let result = done.body["result"].as_str().unwrap_or_default();
    assert!(result.starts_with("built 3 bytes"), "{result}");
    assert_eq!(worker.get("/alive").status, 200);
}

#[test]
fn duplicate_job_id_is_answered_from_memory_without_a_second_build() {
    let worker = Worker::start("a", 200);
    assert_eq!(worker.submit("j1", "abc").status, 202);
    // The same job again while it builds: still running, not a conflict.
    let again = worker.submit("j1", "abc");
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(again.body["state"], "running");
    let done = worker.wait_done("j1");

    let duplicate = worker.submit("j1", "abc");
    assert_eq!(duplicate.status, 200, "{:?}", duplicate.body);
    assert_eq!(duplicate.body["state"], "done");
    assert_eq!(duplicate.body["result"], done.body["result"]);
    // Still free: the duplicate started nothing.
    assert_eq!(worker.get("/alive").status, 200);

    let built = events(&worker.journal_lines())
        .into_iter()
        .filter(|e| *e == ev("build-done", Some("j1")))
        .count();
    assert_eq!(built, 1);
}

#[test]
fn busy_with_another_job_answers_409_naming_it() {
    let worker = Worker::start("a", 60_000);
    assert_eq!(worker.submit("j0", "").status, 202);
    let answer = worker.submit("j1", "");
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"], "busy with j0");
    assert_eq!(answer.body["job"], "j0");
    assert_eq!(worker.get("/jobs/j1").status, 404);
}

#[test]
fn bad_jobs_are_refused_with_400_and_unknown_jobs_are_404() {
    let worker = Worker::start("a", 100);
    for body in [
        "not json",
        "{}",
        r#"{"payload":"x"}"#,
        r#"{"id":"","payload":"x"}"#,
        r#"{"id":"a/b","payload":"x"}"#,
        r#"{"id":7,"payload":"x"}"#,
    ] {
        let answer = worker.post("/jobs", body);
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.body);
        assert!(answer.body["error"].as_str().is_some(), "{body}");
    }
    let long = "x".repeat(129);
    assert_eq!(worker.submit(&long, "").status, 400);
    assert_eq!(worker.get(&format!("/jobs/{long}")).status, 400);
    let unknown = worker.get("/jobs/nope");
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no job nope")),
        "{:?}",
        unknown.body
    );
    // Nothing started.
    assert_eq!(worker.get("/alive").status, 200);
}

#[test]
fn journal_records_start_builds_and_exit_on_sigterm() {
    let mut worker = Worker::start("a", 100);
    assert_eq!(worker.submit("j1", "p").status, 202);
    worker.wait_done("j1");
    assert_eq!(worker.submit("j2", "p").status, 202);
    worker.wait_done("j2");
    worker.signal(Signal::SIGTERM);
    let status = worker
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", worker.stderr_text());

    let lines = worker.journal_lines();
    assert_eq!(
        events(&lines),
        vec![
            ev("start", None),
            ev("build-started", Some("j1")),
            ev("build-done", Some("j1")),
            ev("build-started", Some("j2")),
            ev("build-done", Some("j2")),
            ev("exit", None),
        ]
    );
    let pid = u64::from(worker.child.id());
    for line in &lines {
        assert_eq!(line["instance"], "a");
        assert_eq!(line["pid"].as_u64(), Some(pid));
        assert!(line["t_ms"].as_u64().is_some_and(|t| t > 0));
    }
    assert_eq!(lines[1]["role"], "busy");
    assert_eq!(lines[2]["role"], "free");
    assert_eq!(lines[5]["reason"], "SIGTERM");
}

#[test]
fn sigterm_during_a_build_abandons_it_without_build_done() {
    let mut worker = Worker::start("a", 60_000);
    assert_eq!(worker.submit("j1", "p").status, 202);
    worker.signal(Signal::SIGTERM);
    let status = worker
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        events(&worker.journal_lines()),
        vec![
            ev("start", None),
            ev("build-started", Some("j1")),
            ev("exit", Some("j1")),
        ]
    );
}
