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
            "unknown app \"db\"",
        ),
        (
            "warm standby alone",
            "[apps.x]\nha = \"warm-standby\"\ncommand = [\"run\"]\n[apps.x.hook]\nkind = \"command\"\ncommand = [\"n\"]\n[[apps.x.instances]]\nid = \"a\"\nhost = \"local\"\n",
            "10:6",
            "at least two instances",
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
