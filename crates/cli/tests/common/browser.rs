//! A real Chromium for end-to-end tests of the dashboard (include it with
//! `#[path = "common/browser.rs"] mod browser;` beside `mod common;`): chromedriver on a
//! free port (stopped when the guard drops, even on a failed assertion) and
//! a headless WebDriver session through `fantoccini`.
#![allow(dead_code, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// Where Debian's `chromium-driver` puts chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A running chromedriver; shut down (with the browsers it started) on drop.
pub struct Driver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it answers.
    /// Panics with the fix if Chromium or chromedriver is not installed:
    /// this test never skips.
    pub fn start() -> Driver {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install it with `apt-get install -y chromium chromium-driver` \
                 (scripts/test.sh does; the {package} package); the dashboard test needs a real browser"
            );
        }
        let port = crate::common::free_port();
        let log = tempfile::NamedTempFile::new().expect("chromedriver log file");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = Driver { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status").is_none() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within 20 s\n{}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// What chromedriver printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// A new headless Chromium session (window `width`×`height`) that
    /// keeps the browser's console log.
    pub async fn session(&self, width: u32, height: u32) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--no-first-run",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}\n{}", self.log()))
    }

    /// The browser's console entries since the last call (chromedriver's
    /// log endpoint): `{level, message, source, timestamp}` each.
    pub async fn browser_log(&self, client: &Client) -> Vec<Value> {
        let id = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let answer: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .post(format!(
                "http://127.0.0.1:{}/session/{id}/se/log",
                self.port
            ))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("chromedriver answers the log request")
            .json()
            .await
            .expect("the log is JSON");
        answer["value"]
            .as_array()
            .unwrap_or_else(|| panic!("chromedriver returned no browser log: {answer}"))
            .clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `/shutdown` quits every session's browser, then chromedriver.
        let _ = http(self.port, "GET", "/shutdown");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 request to chromedriver (usable from `Drop`): the
/// answer's text, or None if it did not answer.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // chromedriver may keep the connection open: what came before the
    // timeout or the end is the answer.
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}
