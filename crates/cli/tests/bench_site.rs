//! `tandem bench site-loss` as a user runs it: one trial on the cluster of
//! network namespaces the bench builds (three etcd members, agents h1 in
//! dc1, h2 and h3 in dc2), printed as JSON with its four figures; and bad
//! flags refused before anything starts. Needs root, `ip`, `iptables` and
//! etcd.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::tandem;

/// The longest a one-trial run may take (the bench bounds each of its own
/// waits; this bounds the whole).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `tandem ARGS`, killed (SIGKILL) if it outlives `RUN_TIMEOUT`.
fn run(args: &[&str]) -> Output {
    let child = Command::new(tandem())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("wait for tandem"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!(
                "tandem {} did not finish within {} s",
                args.join(" "),
                RUN_TIMEOUT.as_secs()
            );
        }
    }
}

#[test]
fn site_loss_bench_prints_the_four_figures_as_json() {
    let out = run(&["bench", "site-loss", "--trials", "1", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tandem bench site-loss failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in the output:\n{stdout}\n{stderr}"));
    let doc: serde_json::Value = serde_json::from_str(line).expect("the figures are JSON");
    println!("{doc:#}");
    assert_eq!(doc["bench"], "site-loss", "{doc}");
    assert_eq!(doc["trials"], 1, "{doc}");
    assert_eq!(doc["asked_lease_ttl_ms"], 2000, "{doc}");
    // etcd grants whole seconds: 2 s is granted as asked.
    assert_eq!(doc["lease_ttl_ms"], 2000, "{doc}");
    let figure = |name: &str| -> f64 {
        let f = &doc["figures"][name];
        let samples = f["samples_ms"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples of {name}: {doc}"));
        assert_eq!(samples.len(), 1, "{name}: {doc}");
        let ms = samples[0].as_f64().expect("a number of ms");
        assert!(ms > 0.0 && ms < 60_000.0, "{name} = {ms} ms: {doc}");
        for stat in ["min_ms", "p50_ms", "p99_ms", "max_ms"] {
            assert_eq!(
                f[stat].as_f64(),
                Some(ms),
                "{name} {stat} of one trial: {doc}"
            );
        }
        ms
    };
    let (lost, read_only) = (figure("lost"), figure("read_only"));
    let (serving, proxy) = (figure("serving"), figure("proxy"));
    assert!(proxy >= serving, "proxy {proxy} < serving {serving}: {doc}");
    // A site is lost once its hosts' leases ended: not before the TTL
    // less the renew interval (the last renewal may just precede the cut).
    assert!(lost > 1000.0, "lost after {lost} ms: {doc}");
    assert!(read_only > 1000.0, "read-only after {read_only} ms: {doc}");
}

#[test]
fn site_loss_bench_refuses_bad_flags_before_anything_starts() {
    for (flag, value, says) in [
        (
            "--trials",
            "0",
            "invalid value '0' for '--trials <TRIALS>': 0 is not in 1..=1000",
        ),
        (
            "--lease-ttl-ms",
            "999",
            "invalid value '999' for '--lease-ttl-ms <LEASE_TTL_MS>': 999 is not in 1000..=60000",
        ),
        (
            "--lease-ttl-ms",
            "60001",
            "invalid value '60001' for '--lease-ttl-ms <LEASE_TTL_MS>': 60001 is not in 1000..=60000",
        ),
    ] {
        let out = run(&["bench", "site-loss", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{flag} {value}: nothing starts: {out:?}"
        );
    }
}
