//! API tokens end to end: `tandem token new` makes them, `tandem up
//! --tokens FILE` enforces them, the CLI presents them (`--token`,
//! `TANDEM_TOKEN`), a `read` token cannot switch over and changes nothing,
//! the event of an operator's switchover names its token, and SIGHUP
//! reloads the file.
#![allow(clippy::disallowed_methods)] // a test waits with deadlines

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Up, signal, tandem};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tandem());
    cmd.args(args).env_remove("TANDEM_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tandem")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tandem token new NAME --role ROLE --file FILE`: the token printed.
fn new_token(file: &Path, name: &str, role: &str) -> String {
    let o = run(
        &[
            "token",
            "new",
            name,
            "--role",
            role,
            "--file",
            file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(token.starts_with("tdm_") && token.len() > 60, "{token:?}");
    token
}

#[tokio::test]
async fn tokens_guard_every_command_and_name_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    let ops = new_token(&file, "ops", "operate");
    let viewer = new_token(&file, "viewer", "read");
    // The file holds hashes, never the tokens, and is private.
    let stored = std::fs::read_to_string(&file).expect("token file");
    assert!(
        !stored.contains(&ops) && !stored.contains(&viewer),
        "{stored}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "token file mode {mode:o}");
    }
    // A name already taken changes nothing.
    let again = run(
        &[
            "token",
            "new",
            "ops",
            "--role",
            "read",
            "--file",
            file.to_str().expect("path"),
        ],
        &[],
    );
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("two tokens are named"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read_to_string(&file).expect("file"), stored);

    let file_arg = file.to_str().expect("path").to_owned();
    let up = Up::pair_args(dir, &["--tokens", &file_arg], Some(&ops));
    let first = up.wait_for("a primary", 30, |a| a.primary.is_some()).await;
    let primary = first.primary.clone().expect("primary");
    let api = up.api.clone();

    // No token: refused with the sentence that says what to do.
    let o = run(&["status", "--api", &api], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("needs a token"), "{}", text(&o));
    // A read token reads, by flag or by environment.
    let o = run(&["status", "--api", &api, "--token", &viewer], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["status", "--api", &api], &[("TANDEM_TOKEN", &viewer)]);
    assert!(o.status.success(), "{}", text(&o));
    // An unknown token is refused.
    let o = run(&["status", "--api", &api, "--token", "tdm_wrong"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("not known"), "{}", text(&o));

    // A read token cannot switch over, and nothing changes.
    let o = run(
        &["switchover", "web", "--api", &api, "--token", &viewer],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("token \"viewer\" has the read role"),
        "{}",
        text(&o)
    );
    let after = up.app("web").await;
    assert_eq!(after.primary, first.primary);
    assert_eq!(after.epoch, first.epoch);
    assert!(after.intent.is_none(), "an intent was recorded: {after:?}");

    // An operate token switches over; the events name it.
    let o = run(&["switchover", "web", "--api", &api, "--token", &ops], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let moved = up
        .wait_for("the switchover", 30, |a| {
            a.primary.is_some() && a.primary.as_deref() != Some(primary.as_str())
        })
        .await;
    assert!(moved.epoch > first.epoch);
    let events = up.client().events(None, Some(200)).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind.as_str() == "intent" && e.message.contains("token \"ops\"")),
        "no event names the token:\n{}",
        events
            .iter()
            .map(|e| format!("{} {} {}", e.seq, e.kind.as_str(), e.message))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A token added to the file works once the API got SIGHUP.
    let late = new_token(&file, "late", "read");
    let o = run(&["status", "--api", &api, "--token", &late], &[]);
    assert!(!o.status.success(), "a token worked before the reload");
    signal(up.child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(&["status", "--api", &api, "--token", &late], &[]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token never worked after SIGHUP: {}\n{}",
            text(&o),
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And `tandem up` is still running, cluster and all.
    assert!(up.status().await.apps.iter().any(|a| a.name == "web"));
}
