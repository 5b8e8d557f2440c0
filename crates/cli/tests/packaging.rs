//! Packaging: shell completions and manual pages generated from the CLI,
//! the systemd unit of `tandem agent` checked by `systemd-analyze verify`,
//! and the agent's systemd protocol (READY=1 once it runs, WATCHDOG=1 at
//! half the watchdog period, STOPPING=1 on SIGTERM) on a real etcd cluster.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "../../store-etcd/tests/common/mod.rs"]
mod etcd;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, signal, tandem};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(tandem())
        .args(args)
        .output()
        .expect("run tandem")
}

#[test]
fn completions_name_every_command_and_an_unknown_shell_is_refused() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for command in ["switchover", "fence", "maintenance", "agent", "validate"] {
            assert!(text.contains(command), "{shell} completion lacks {command}");
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"));
}

#[test]
fn the_manual_pages_cover_every_command() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH tandem 1"), "{page}");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["man", "--dir", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "tandem.1",
        "tandem-fence.1",
        "tandem-agent.1",
        "tandem-topology-apply.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}

/// The unit as shipped, with this build's binary in place of
/// /usr/bin/tandem: `systemd-analyze verify` finds nothing to say.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/systemd/tandem-agent.service"
    ))
    .expect("the unit");
    assert!(unit.contains("ExecStart=/usr/bin/tandem agent"), "{unit}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem-agent.service");
    let bin = tandem().display().to_string();
    std::fs::write(&path, unit.replace("/usr/bin/tandem", &bin)).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{out:?}");
    // A misspelt key is caught: the check can fail.
    std::fs::write(
        &path,
        unit.replace("/usr/bin/tandem", &bin)
            .replace("KillMode=", "KilMode="),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KilMode"),
        "{out:?}"
    );
}

/// `tandem agent` under a notify socket: READY=1 once it runs its
/// instances, WATCHDOG=1 over and over at half of WATCHDOG_USEC, and
/// STOPPING=1 when told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_speaks_systemds_notify_protocol() {
    let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(1))
        .await
        .expect("etcd");
    let store = format!(
        "etcd://{}",
        cluster.endpoint(0).trim_start_matches("http://")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = format!(
        r#"
[cluster]
agent_port = {agent_port}

[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[apps.web]
ha = "none"
command = ["tandem", "demo-app", "--port", "{{ports.http}}"]

[[apps.web.instances]]
id = "a"
host = "h1"
ports = {{ http = {port} }}
"#,
        agent_port = free_port(),
        port = free_port(),
    );
    let file = dir.path().join("t.toml");
    std::fs::write(&file, topology).expect("write");
    let out = Command::new(tandem())
        .args(["topology", "apply"])
        .arg(&file)
        .args(["--store", &store])
        .output()
        .expect("apply");
    assert!(out.status.success(), "{out:?}");

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut agent = Command::new(tandem())
        .args(["agent", "--store", &store, "--host", "h1"])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tandem agent");
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv_until = |want: &str, said: &mut Vec<String>, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == want);
                said.push(text);
                if found {
                    return true;
                }
            }
        }
        false
    };
    assert!(recv_until("READY=1", &mut said, 30), "no READY=1: {said:?}");
    // Pings at half of 200 ms: several within a second.
    let mut pings = 0;
    for _ in 0..3 {
        if recv_until("WATCHDOG=1", &mut said, 2) {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "{said:?}");
    signal(agent.id(), "TERM");
    assert!(
        recv_until("STOPPING=1", &mut said, 15),
        "no STOPPING=1: {said:?}"
    );
    let status = agent.wait().expect("agent exits");
    assert!(status.success(), "{status:?}");
}

/// `packaging/deb/build.sh` makes a Debian package of the binary under
/// test: its control fields, the files it installs (the agent's settings
/// as a conffile), and a binary that runs once unpacked.
#[test]
fn the_debian_package_holds_the_binary_the_unit_and_the_settings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().expect("tempdir");
    let built = Command::new("bash")
        .arg(root.join("packaging/deb/build.sh"))
        .arg(tandem())
        .arg(out.path())
        .output()
        .expect("run build.sh");
    assert!(
        built.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .args(["--field", &deb, name])
            .output()
            .expect("dpkg-deb --field");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "tandem");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .expect("dpkg-deb --contents");
    let listing = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/bin/tandem",
        "./lib/systemd/system/tandem-agent.service",
        "./etc/tandem/agent.env",
        "./usr/share/man/man1/tandem.1.gz",
        "./usr/share/man/man1/tandem-agent.1.gz",
        "./usr/share/bash-completion/completions/tandem",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    let env_line = listing
        .lines()
        .find(|l| l.ends_with("./etc/tandem/agent.env"))
        .unwrap_or_default();
    assert!(env_line.starts_with("-rw-------"), "{env_line}");
    let unpacked = tempfile::tempdir().expect("tempdir");
    let x = Command::new("dpkg-deb")
        .args(["--control", &deb])
        .arg(unpacked.path().join("DEBIAN"))
        .status()
        .expect("dpkg-deb --control");
    assert!(x.success());
    let conffiles =
        std::fs::read_to_string(unpacked.path().join("DEBIAN/conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/tandem/agent.env");
    let x = Command::new("dpkg-deb")
        .args(["--extract", &deb])
        .arg(unpacked.path())
        .status()
        .expect("dpkg-deb --extract");
    assert!(x.success());
    let version = Command::new(unpacked.path().join("usr/bin/tandem"))
        .arg("--version")
        .output()
        .expect("the packaged binary runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tandem {}", env!("CARGO_PKG_VERSION"))
    );
}
