//! End-to-end tests of the demo app: a real process, real HTTP, real signals.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{Spawn, request};
use nix::sys::signal::Signal;
use serde_json::Value;

fn role_epoch(body: &Value) -> (String, u64) {
    (
        body["role"].as_str().unwrap_or("<none>").to_owned(),
        body["epoch"].as_u64().unwrap_or(u64::MAX),
    )
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["event"].as_str().unwrap_or("<none>"))
        .collect()
}

#[test]
fn get_root_reports_identity_role_and_epoch_from_env() {
    let demo = Spawn::new("backup", 7).start();
    assert!(
        demo.startup_line
            .starts_with("demo-app web/a listening on 127.0.0.1:"),
        "{}",
        demo.startup_line
    );
    assert!(
        demo.startup_line
            .trim_end()
            .ends_with("as backup (epoch 7)"),
        "{}",
        demo.startup_line
    );
    let answer = demo.get("/");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["app"], "web");
    assert_eq!(answer.body["instance"], "a");
    assert_eq!(role_epoch(&answer.body), ("backup".into(), 7));
    assert_eq!(
        answer.body["pid"].as_u64(),
        Some(u64::from(demo.child.id()))
    );
    assert!(answer.body["since_ms"].as_u64().is_some_and(|t| t > 0));
    let health = demo.get("/health");
    assert_eq!((health.status, &health.body["status"]), (200, &"ok".into()));
}

#[test]
fn role_hook_promotes_and_same_epoch_demotion_is_accepted() {
    let demo = Spawn::new("backup", 3).start();
    let answer = demo.set_role("primary", 4);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(role_epoch(&answer.body), ("primary".into(), 4));
    assert_eq!(role_epoch(&demo.get("/").body), ("primary".into(), 4));

    let answer = demo.set_role("backup", 4);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(role_epoch(&demo.get("/").body), ("backup".into(), 4));

    // Extra fields are ignored, app and instance are optional.
    let answer = demo.post(
        "/tandem/role",
        r#"{"role":"primary","epoch":5,"reason":"switchover"}"#,
    );
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(role_epoch(&demo.get("/").body), ("primary".into(), 5));
}

#[test]
fn role_hook_with_lower_epoch_is_rejected_with_409() {
    let demo = Spawn::new("primary", 5).start();
    let answer = demo.set_role("backup", 4);
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let message = answer.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("epoch 4 is lower than the current epoch 5"),
        "{message}"
    );
    assert_eq!(role_epoch(&answer.body["current"]), ("primary".into(), 5));
    assert_eq!(role_epoch(&demo.get("/").body), ("primary".into(), 5));
}

#[test]
fn role_hook_with_unknown_role_or_bad_body_is_rejected_with_400() {
    let demo = Spawn::new("backup", 2).start();
    let answer = demo.set_role("master", 3);
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let message = answer.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("unknown role \"master\""), "{message}");
    assert!(message.contains("primary, backup"), "{message}");

    for body in [
        "not json",
        r#"{"role":"primary"}"#,
        r#"{"role":"primary","epoch":-1}"#,
    ] {
        let answer = demo.post("/tandem/role", body);
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.body);
        assert!(answer.body["error"].as_str().is_some(), "{body}");
    }

    let answer = demo.post(
        "/tandem/role",
        r#"{"app":"web","instance":"b","role":"primary","epoch":3}"#,
    );
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(role_epoch(&demo.get("/").body), ("backup".into(), 2));
}

#[test]
fn unhealthy_switch_makes_health_503_until_healthy() {
    let demo = Spawn::new("active", 0).start();
    assert_eq!(demo.get("/health").status, 200);
    assert_eq!(demo.post("/unhealthy", "").status, 200);
    let health = demo.get("/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.body["status"], "unhealthy");
    assert_eq!(demo.post("/healthy", "").status, 200);
    assert_eq!(demo.get("/health").status, 200);
}

#[test]
fn crash_exits_at_once_with_code_1() {
    let mut demo = Spawn::new("primary", 1).start();
    // The process dies before answering: the request fails or gets nothing.
    let _ = demo.try_request("POST", "/crash", Some(""), Duration::from_secs(2));
    let status = demo
        .wait_exit(Duration::from_secs(5))
        .expect("process should exit after /crash");
    assert_eq!(status.code(), Some(1));
    let lines = demo.journal_lines();
    assert!(!events(&lines).contains(&"exit"), "{lines:?}");
}

#[test]
fn hang_stops_answering_but_the_process_stays_alive() {
    let mut demo = Spawn::new("primary", 1).start();
    assert_eq!(demo.post("/hang", "").status, 200);
    for path in ["/", "/health"] {
        let result = demo.try_request("GET", path, None, Duration::from_millis(500));
        assert!(
            result.is_err(),
            "GET {path} answered while hung: {result:?}"
        );
    }
    assert!(demo.wait_exit(Duration::from_millis(100)).is_none());
    // Still acting as primary in the journal: alive, just unresponsive.
    let before = demo.journal_lines().len();
    std::thread::sleep(Duration::from_millis(300));
    let acting: Vec<_> = demo.journal_lines()[before..]
        .iter()
        .filter(|l| l["event"] == "acting")
        .cloned()
        .collect();
    assert!(!acting.is_empty());
    // A hung process still exits on SIGTERM.
    demo.signal(Signal::SIGTERM);
    let status = demo.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_and_sigusr1_apply_the_role_file() {
    let demo = Spawn::new("backup", 1).with_role_file().start();
    std::fs::write(
        &demo.role_file,
        r#"{"role":"primary","epoch":2,"app":"web"}"#,
    )
    .unwrap();
    demo.signal(Signal::SIGHUP);
    wait_for_role(&demo, "primary", 2);

    std::fs::write(&demo.role_file, r#"{"role":"backup","epoch":2}"#).unwrap();
    demo.signal(Signal::SIGUSR1);
    wait_for_role(&demo, "backup", 2);

    // Same rules as the HTTP hook: a stale epoch or a bad file changes nothing.
    // (One at a time: signals sent in a burst may be merged into one.)
    std::fs::write(&demo.role_file, r#"{"role":"primary","epoch":1}"#).unwrap();
    demo.signal(Signal::SIGHUP);
    wait_for_stderr(&demo, "stale role hook");
    std::fs::write(&demo.role_file, "garbage").unwrap();
    demo.signal(Signal::SIGHUP);
    wait_for_stderr(&demo, "invalid role file");
    assert_eq!(role_epoch(&demo.get("/").body), ("backup".into(), 2));
}

fn wait_for_stderr(demo: &common::Demo, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !demo.stderr_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in stderr:\n{}",
            demo.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_role(demo: &common::Demo, role: &str, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = role_epoch(&demo.get("/").body);
        if now == (role.to_owned(), epoch) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {now:?}, expected {role} (epoch {epoch})\nstderr:\n{}",
            demo.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn frozen_primary_never_reports_primary_at_its_old_epoch_after_resume() {
    let demo = Spawn::new("primary", 5)
        .arg("--freeze-threshold-ms")
        .arg("500")
        .start();
    assert_eq!(role_epoch(&demo.get("/").body), ("primary".into(), 5));
    std::thread::sleep(Duration::from_millis(250));

    demo.stop();
    let stopped_at = Instant::now();
    // Requests sent while frozen: the kernel queues them, the process
    // answers them first thing after the resume.
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let port = demo.port;
            std::thread::spawn(move || request(port, "GET", "/", None, Duration::from_secs(10)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    demo.signal(Signal::SIGCONT);

    let mut seen = Vec::new();
    for _ in 0..50 {
        let answer = demo.get("/");
        assert_eq!(answer.status, 200);
        seen.push(role_epoch(&answer.body));
    }
    for handle in queued {
        let answer = handle
            .join()
            .expect("thread")
            .expect("queued request answered");
        seen.push(role_epoch(&answer.body));
    }
    assert!(stopped_at.elapsed() >= Duration::from_millis(1500));
    assert!(
        seen.iter().all(|s| *s == ("fenced".to_owned(), 5)),
        "after the freeze: {seen:?}\njournal: {:?}\nstderr:\n{}",
        demo.journal_lines(),
        demo.stderr_text()
    );
    let health = demo.get("/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.body["status"], "fenced");

    let lines = demo.journal_lines();
    let fenced = lines
        .iter()
        .position(|l| l["event"] == "fenced")
        .unwrap_or_else(|| panic!("no fenced line: {lines:?}"));
    assert_eq!(lines[fenced]["epoch"], 5);
    assert!(
        lines[fenced]["frozen_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1000)
    );
    assert!(
        lines[..fenced].iter().any(|l| l["event"] == "acting"),
        "acted before the freeze: {lines:?}"
    );
    assert!(
        lines[fenced..].iter().all(|l| l["event"] != "acting"),
        "acted after the freeze: {lines:?}"
    );

    // The next hook clears the fence.
    assert_eq!(demo.set_role("primary", 6).status, 200);
    assert_eq!(role_epoch(&demo.get("/").body), ("primary".into(), 6));
    assert_eq!(demo.get("/health").status, 200);
}

#[test]
fn frozen_backup_keeps_its_role() {
    let demo = Spawn::new("backup", 5)
        .arg("--freeze-threshold-ms")
        .arg("200")
        .start();
    demo.stop();
    std::thread::sleep(Duration::from_millis(500));
    demo.signal(Signal::SIGCONT);
    assert_eq!(role_epoch(&demo.get("/").body), ("backup".into(), 5));
    assert_eq!(demo.get("/health").status, 200);
}

#[test]
fn sigterm_exits_0_and_the_journal_shows_the_primary_interval() {
    let mut demo = Spawn::new("backup", 1).start();
    assert_eq!(demo.set_role("primary", 2).status, 200);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(demo.set_role("backup", 2).status, 200);
    demo.signal(Signal::SIGTERM);
    let status = demo.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));

    let lines = demo.journal_lines();
    let kinds = events(&lines);
    assert_eq!(kinds.first(), Some(&"start"), "{lines:?}");
    assert_eq!(kinds.last(), Some(&"exit"), "{lines:?}");
    assert_eq!(role_epoch(&lines[0]), ("backup".into(), 1));
    for line in &lines {
        assert_eq!(line["app"], "web");
        assert_eq!(line["instance"], "a");
        assert_eq!(line["pid"].as_u64(), Some(u64::from(demo.child.id())));
        assert!(line["t_ms"].as_u64().is_some());
    }
    let promoted = kinds.iter().position(|k| *k == "role").expect("role line");
    let demoted = kinds.iter().rposition(|k| *k == "role").expect("role line");
    assert_eq!(role_epoch(&lines[promoted]), ("primary".into(), 2));
    assert_eq!(role_epoch(&lines[demoted]), ("backup".into(), 2));
    let acting: Vec<_> = (0..lines.len()).filter(|&i| kinds[i] == "acting").collect();
    assert!(acting.len() >= 3, "{lines:?}");
    assert!(
        acting.iter().all(|&i| promoted < i && i < demoted),
        "acting only while primary: {lines:?}"
    );
    assert_eq!(role_epoch(&lines[lines.len() - 1]), ("backup".into(), 2));
}

#[test]
fn sigint_exits_0() {
    let mut demo = Spawn::new("free", 0).start();
    demo.signal(Signal::SIGINT);
    let status = demo.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn command_hook_sets_the_role_and_reports_refusals() {
    let demo = Spawn::new("backup", 3).start();
    tandem_demo::set_role(demo.port, "primary", 4)
        .await
        .expect("set_role");
    let port = demo.port;
    let now = tokio::task::spawn_blocking(move || {
        request(port, "GET", "/", None, common::REQUEST_TIMEOUT)
    })
    .await
    .expect("join")
    .expect("GET /");
    assert_eq!(role_epoch(&now.body), ("primary".into(), 4));

    let err = tandem_demo::set_role(demo.port, "backup", 3)
        .await
        .expect_err("stale epoch");
    let message = format!("{err:#}");
    assert!(message.contains("HTTP 409"), "{message}");
    assert!(
        message.contains("lower than the current epoch 4"),
        "{message}"
    );

    let err = tandem_demo::set_role(demo.port, "boss", 5)
        .await
        .expect_err("bad role");
    assert!(
        format!("{err:#}").contains("unknown role \"boss\""),
        "{err:#}"
    );

    let err = tandem_demo::set_role(common::free_port(), "primary", 5)
        .await
        .expect_err("nobody listening");
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}

#[test]
fn invalid_env_role_is_a_clear_startup_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-demo"))
        .env("TANDEM_ROLE", "master")
        .env_remove("TANDEM_EPOCH")
        .args(["--port", &common::free_port().to_string()])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown role \"master\""), "{stderr}");
}
