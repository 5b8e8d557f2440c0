//! `tandem validate` and `tandem up` on invalid topologies: every problem
//! with file, line and column; exit code 1; nothing started.

mod common;

use std::process::Command;

fn validate(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(common::tandem())
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run");
    let stdout =
        String::from_utf8_lossy(&out.stdout).replace(&path.display().to_string(), "bad.toml");
    (
        out.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEAD: &str = r#"[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"
"#;

#[test]
fn every_shipped_example_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let out = Command::new(common::tandem())
            .arg("validate")
            .arg(&path)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
    assert!(seen >= 2, "expected the quickstart and iwd examples");
}

#[test]
fn each_invalid_topology_is_rejected_at_its_line_and_column() {
    // (what, text after HEAD, expected "line:column: " prefix, message part)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "unknown host",
            "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"nowhere\"\n",
            "14:8",
            "unknown host \"nowhere\"",
        ),
        (
            "unknown key",
            "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\nretries = 3\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "12:1",
            "unknown key \"retries\"",
        ),
        (
            "empty command",
            "[apps.x]\nha = \"none\"\ncommand = []\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "11:11",
            "empty command",
        ),
        (
            "bad duration",
            "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\nstop_timeout = \"5 sec\"\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "12:16",
            "bad duration",
        ),
        (
            "duplicate instance",
            "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "16:6",
            "duplicate instance id \"a\"",
        ),
        (
            "link to unknown app",
            "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n[[links]]\nfrom = \"x\"\nto = \"db\"\ncardinality = \"one\"\n",
            "17:6",
            "unknown app or endpoint \"db\"",
        ),
        (
            "warm standby alone",
            "[apps.x]\nha = \"warm-standby\"\ncommand = [\"run\"]\n[apps.x.hook]\nkind = \"command\"\ncommand = [\"n\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "10:6",
            "at least two instances",
        ),
        (
            "unknown fencing",
            "[apps.x]\nha = \"cold-standby\"\ncommand = [\"run\"]\nfencing = \"tokn\"\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "12:11",
            "unknown fencing \"tokn\" in app \"x\" (expected one of: lease, token) (did you mean \"token\"?)",
        ),
        (
            "token fencing on a singleton",
            "[apps.x]\nha = \"singleton\"\ncommand = [\"run\"]\nfencing = \"token\"\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "12:11",
            "app \"x\": fencing = \"token\" needs ha mode hot-standby, warm-standby or cold-standby, not \"singleton\": a singleton promises never to run two instances at once",
        ),
        (
            "token fencing on a pool",
            "[apps.x]\nha = \"pool\"\ncommand = [\"run\"]\nfencing = \"token\"\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "12:11",
            "not \"pool\": it has no primary and no epoch",
        ),
        (
            "one missed heartbeat",
            "[cluster]\nmissed_heartbeats = 1\n",
            "10:21",
            "\"missed_heartbeats\" in [cluster] must be at least 2, found 1: one lost heartbeat must never make a host suspected",
        ),
        (
            "too many missed heartbeats",
            "[cluster]\nheartbeat_interval = \"1ms\"\nmissed_heartbeats = 20000\n",
            "11:21",
            "\"missed_heartbeats\" in [cluster] must be at most 10000, found 20000",
        ),
        (
            "zero heartbeat interval",
            "[cluster]\nheartbeat_interval = \"0ms\"\n",
            "10:22",
            "bad duration \"0ms\"",
        ),
        (
            "heartbeats slower than the lease",
            "[cluster]\nheartbeat_interval = \"1s\"\nmissed_heartbeats = 3\n",
            "10:22",
            "heartbeat_interval (1s) × missed_heartbeats (3) = 3s must be less than lease_ttl (3s) − renew_interval (500ms) = 2500ms in [cluster]",
        ),
        (
            "fence without command",
            "[hosts.fence]\ntimeout = \"1s\"\n",
            "9:1",
            "missing key \"command\" in fence device of host \"local\"",
        ),
        (
            "empty fence command",
            "[hosts.fence]\ncommand = []\n",
            "10:11",
            "empty command in fence device of host \"local\"",
        ),
        (
            "unknown key in fence",
            "[hosts.fence]\ncommand = [\"/bin/sh\"]\nkind = \"ipmi\"\n",
            "11:1",
            "unknown key \"kind\" in fence device of host \"local\" (expected one of: command, timeout)",
        ),
        (
            "unknown placeholder in fence command",
            "[hosts.fence]\ncommand = [\"/bin/sh\", \"{app}\"]\n",
            "10:24",
            "unknown placeholder \"{app}\" in the fence command of host \"local\" (expected one of: {host}, {address}, {site}",
        ),
        (
            "zero fence timeout",
            "[hosts.fence]\ncommand = [\"/bin/sh\"]\ntimeout = \"0s\"\n",
            "11:11",
            "bad duration \"0s\"",
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, at, part) in cases {
        let (code, stdout, _) = validate(&format!("{HEAD}\n{body}"));
        let want = format!("bad.toml:{at}: ");
        if code != 1
            || !stdout
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(part))
        {
            failures.push(format!("{what}: exit {code}, wanted a line starting {want:?} containing {part:?}, got:\n{stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn duplicate_port_on_a_host_names_both_owners() {
    let body = "[apps.x]\nha = \"none\"\ncommand = [\"run\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\nports = { http = 9000 }\n[apps.y]\nha = \"none\"\ncommand = [\"run\"]\n[[apps.y.instances]]\nid = \"b\"\nhost = \"local\"\nports = { web = 9000 }\n";
    let (code, stdout, _) = validate(&format!("{HEAD}\n{body}"));
    assert_eq!(code, 1);
    let line = stdout
        .lines()
        .find(|l| l.contains("9000"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("x/a") || line.contains("\"a\""), "{line}");
}

#[test]
fn tandem_up_refuses_an_invalid_topology_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!("{HEAD}\n[apps.x]\nha = \"none\"\ncommand = []\n"),
    )
    .expect("write");
    let out = Command::new(common::tandem())
        .arg("up")
        .arg(&path)
        .args(["--api", &format!("127.0.0.1:{}", common::free_port())])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:11:11"), "{err}");
    assert!(
        !dir.path().join("bad.tandem").exists(),
        "a data directory was created"
    );
}

/// `tandem validate` run in `cwd` with `$PATH` set to `path` only.
fn validate_in(cwd: &std::path::Path, path: &std::path::Path, text: &str) -> (i32, String) {
    let file = cwd.join("t.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(common::tandem())
        .arg("validate")
        .arg("t.toml")
        .current_dir(cwd)
        .env("PATH", path)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn fence_program_must_be_executable_by_path_or_on_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let bin = root.join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for (path, mode) in [
        (root.join("fence-plain"), 0o644),
        (root.join("fence-ok"), 0o755),
        (bin.join("fence-on-path"), 0o755),
        (bin.join("fence-plain-on-path"), 0o600),
    ] {
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let topology =
        |program: &str| format!("{HEAD}fence = {{ command = [\"{program}\", \"{{address}}\"] }}\n");
    let r = root.display();
    let b = bin.display();
    let refused = [
        (
            "./fence-plain",
            format!(
                "t.toml:8:22: fence program \"./fence-plain\" of host \"local\": not executable (mode 0644): {r}/fence-plain"
            ),
        ),
        (
            "./missing/fence",
            format!(
                "t.toml:8:22: fence program \"./missing/fence\" of host \"local\": not found: {r}/missing/fence"
            ),
        ),
        (
            "bin/",
            format!("t.toml:8:22: fence program \"bin/\" of host \"local\": not a file: {r}/bin"),
        ),
        (
            "fence-plain-on-path",
            format!(
                "t.toml:8:22: fence program \"fence-plain-on-path\" of host \"local\": not executable (mode 0600): found on $PATH as {b}/fence-plain-on-path, with no executable match"
            ),
        ),
        (
            "fence-ok",
            "t.toml:8:22: fence program \"fence-ok\" of host \"local\": not found on $PATH"
                .to_string(),
        ),
    ];
    for (program, want) in refused {
        let (code, stdout) = validate_in(&root, &bin, &topology(program));
        assert_eq!(code, 1, "{program}: {stdout}");
        assert_eq!(stdout.lines().next(), Some(want.as_str()), "{program}");
    }
    for program in ["./fence-ok", "bin/../fence-ok", "fence-on-path"] {
        let (code, stdout) = validate_in(&root, &bin, &topology(program));
        assert_eq!(code, 0, "{program}: {stdout}");
    }
}
