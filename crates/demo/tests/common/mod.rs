//! Drives a real `tandem-demo` process over HTTP, with a bound on every wait.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Bound on one request when an answer is expected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// How to start a demo app.
pub struct Spawn {
    pub role: &'static str,
    pub epoch: u64,
    pub args: Vec<String>,
    pub role_file: bool,
}

impl Spawn {
    pub fn new(role: &'static str, epoch: u64) -> Self {
        Self {
            role,
            epoch,
            args: Vec::new(),
            role_file: false,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn with_role_file(mut self) -> Self {
        self.role_file = true;
        self
    }

    pub fn start(self) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal.jsonl");
        let role_file = dir.path().join("role.json");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem-demo"));
        for var in [
            "TANDEM_APP",
            "TANDEM_INSTANCE",
            "TANDEM_ROLE",
            "TANDEM_EPOCH",
            "TANDEM_ROLE_FILE",
        ] {
            command.env_remove(var);
        }
        command
            .env("TANDEM_APP", "web")
            .env("TANDEM_INSTANCE", "a")
            .env("TANDEM_ROLE", self.role)
            .env("TANDEM_EPOCH", self.epoch.to_string())
            .args(["--port", &port.to_string()])
            .arg("--journal")
            .arg(&journal)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if self.role_file {
            command.env("TANDEM_ROLE_FILE", &role_file);
        }
        let mut child = command.spawn().expect("spawn tandem-demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut demo = Demo {
            child,
            port,
            journal,
            role_file,
            stderr: stderr_path,
            startup_line: String::new(),
            _dir: dir,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("listening on") => demo.startup_line = line,
            other => panic!(
                "demo app did not start: {other:?}\nstderr:\n{}",
                demo.stderr_text()
            ),
        }
        demo
    }
}

/// A running demo app, killed when dropped.
pub struct Demo {
    pub child: Child,
    pub port: u16,
    pub journal: PathBuf,
    pub role_file: PathBuf,
    pub stderr: PathBuf,
    pub startup_line: String,
    _dir: tempfile::TempDir,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Demo {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("send signal");
    }

    /// Sends SIGSTOP and waits until every thread of the process is stopped:
    /// `kill` returns before the stop takes effect, and a loaded machine may
    /// let the process serve requests for a while after it.
    pub fn stop(&self) {
        self.signal(Signal::SIGSTOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all_stopped = std::fs::read_dir(&tasks)
                .expect("read /proc/PID/task")
                .filter_map(Result::ok)
                .all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                });
            if all_stopped {
                return;
            }
            assert!(Instant::now() < deadline, "process did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Answer {
        self.try_request("GET", path, None, REQUEST_TIMEOUT)
            .unwrap_or_else(|err| panic!("GET {path}: {err}\nstderr:\n{}", self.stderr_text()))
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.try_request("POST", path, Some(body), REQUEST_TIMEOUT)
            .unwrap_or_else(|err| panic!("POST {path}: {err}\nstderr:\n{}", self.stderr_text()))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<Answer> {
        request(self.port, method, path, body, timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

    /// The journal's lines, parsed.
    pub fn journal_lines(&self) -> Vec<Value> {
        read_journal(&self.journal)
    }

    /// Role hook through HTTP.
    pub fn set_role(&self, role: &str, epoch: u64) -> Answer {
        self.post(
            "/tandem/role",
            &format!(r#"{{"app":"web","instance":"a","role":"{role}","epoch":{epoch}}}"#),
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_journal(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
        .collect()
}

/// One HTTP/1.1 request with `Connection: close`, bounded by `timeout`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let addr = ("127.0.0.1", port);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&addr)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete answer in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body)
            .map_err(|e| std::io::Error::other(format!("body {body:?} is not JSON: {e}")))?
    };
    Ok(Answer { status, body })
}
