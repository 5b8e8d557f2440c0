//! End to end: the real `tandem up`, real demo processes, real signals.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{Up, alive, demo_get, signal};
use tandem_api::types::{Health, Role};
use tandem_client::{ClientError, SwitchoverOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_primary_promotes_backup_with_higher_epoch_and_old_one_returns_as_backup() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let old_epoch = p.epoch.expect("primary epoch");
    let old_pid = p.pid.expect("primary pid");

    signal(old_pid, "KILL");

    let app = up
        .wait_for("the backup promoted", 10, |a| {
            a.primary.as_deref() == Some(b.id.as_str())
        })
        .await;
    let nb = app.instances.iter().find(|i| i.id == b.id).unwrap();
    let new_epoch = nb.epoch.expect("epoch");
    assert!(
        new_epoch > old_epoch,
        "epoch {new_epoch} not above {old_epoch}"
    );
    // The component itself says so, on its own port.
    let seen = demo_get(up.port_of(&b.id)).await.expect("backup answers");
    assert_eq!(seen["role"], "primary");
    assert_eq!(seen["epoch"], new_epoch);

    // The killed one is restarted and comes back as a backup.
    let app = up
        .wait_for("the old primary back as a healthy backup", 15, |a| {
            a.instances.iter().any(|i| {
                i.id == p.id
                    && i.role == Role::Backup
                    && i.health == Health::Healthy
                    && i.pid.is_some_and(|pid| pid != old_pid)
            })
        })
        .await;
    assert_eq!(app.primary.as_deref(), Some(b.id.as_str()), "no failback");
    let again = demo_get(up.port_of(&p.id))
        .await
        .expect("old primary answers");
    assert_eq!(again["role"], "backup");

    // The event log says what happened and why.
    let events = up.client().events(None, Some(200)).await.expect("events");
    let promoted = events
        .iter()
        .find(|e| e.message.starts_with(&format!("promoted web/{}", b.id)))
        .unwrap_or_else(|| panic!("no promotion event in {events:#?}"));
    assert_eq!(promoted.epoch, Some(new_epoch));
    assert!(
        promoted.message.contains("exited") || promoted.message.contains("killed"),
        "{}",
        promoted.message
    );
}

/// The same failover with the two other kinds of role hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_and_signal_hooks_carry_roles_through_a_failover() {
    for hook in [common::DemoHook::Command, common::DemoHook::Signal] {
        let up = Up::pair_with(hook);
        let (p, b) = up.wait_pair().await;
        let seen = demo_get(up.port_of(&p.id)).await.expect("primary answers");
        assert_eq!(
            seen["role"], "primary",
            "{hook:?}: the primary was told by the hook"
        );
        signal(p.pid.unwrap(), "KILL");
        let app = up
            .wait_for("the backup promoted", 10, |a| {
                a.primary.as_deref() == Some(b.id.as_str())
            })
            .await;
        let seen = demo_get(up.port_of(&b.id)).await.expect("backup answers");
        assert_eq!(seen["role"], "primary", "{hook:?}");
        assert_eq!(seen["epoch"], app.epoch, "{hook:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_primary_fails_over_and_the_thawed_one_is_told_it_is_a_backup() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let old_epoch = p.epoch.expect("epoch");
    let pid = p.pid.expect("pid");

    signal(pid, "STOP");
    let app = up
        .wait_for("the backup promoted past the frozen primary", 15, |a| {
            a.primary.as_deref() == Some(b.id.as_str())
        })
        .await;
    let new_epoch = app.epoch;
    assert!(new_epoch > old_epoch);
    let frozen = app.instances.iter().find(|i| i.id == p.id).unwrap();
    assert_eq!(
        frozen.role,
        Role::Fenced,
        "a frozen primary that cannot confirm is fenced"
    );
    assert_eq!(
        frozen.pid,
        Some(pid),
        "a frozen process is fenced, not killed"
    );

    signal(pid, "CONT");
    // From the first answer on, it never claims the old epoch's primary
    // role, and it is soon told it is a backup.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answers = 0;
    loop {
        if let Some(v) = demo_get(up.port_of(&p.id)).await {
            answers += 1;
            assert!(
                !(v["role"] == "primary" && v["epoch"] == old_epoch),
                "thawed process reports itself primary with its old epoch: {v}"
            );
            if v["role"] == "backup" {
                assert!(v["epoch"].as_u64().unwrap_or(0) >= new_epoch, "{v}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never told it is a backup ({answers} answers)\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alive(pid), "it was told, not restarted");
    let app = up
        .wait_for("tandem to see it as a backup", 10, |a| {
            a.instances
                .iter()
                .any(|i| i.id == p.id && i.role == Role::Backup)
        })
        .await;
    assert_eq!(app.primary.as_deref(), Some(b.id.as_str()));
    assert_eq!(
        app.instances.iter().find(|i| i.id == p.id).unwrap().pid,
        Some(pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_tandem_up_continues_epochs_where_they_were() {
    let mut up = Up::pair();
    let (p, _) = up.wait_pair().await;
    // Move the epoch on a little first.
    signal(p.pid.unwrap(), "KILL");
    let before = up
        .wait_for("a failover", 10, |a| {
            a.primary.is_some() && a.primary.as_deref() != Some(p.id.as_str())
        })
        .await
        .epoch;
    assert!(before >= 2);

    up.restart();
    let (p2, _) = up.wait_pair().await;
    let after = p2.epoch.unwrap();
    assert!(
        after > before,
        "epoch after restart {after} is not above {before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_demotes_first_then_promotes_the_target() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let old_epoch = p.epoch.unwrap();
    let outcome = up
        .client()
        .switchover("web", Some(&b.id), Duration::from_secs(10))
        .await
        .expect("switchover");
    assert!(
        matches!(outcome, SwitchoverOutcome::Done { .. }),
        "{outcome:?}"
    );
    let app = up.app("web").await;
    assert_eq!(app.primary.as_deref(), Some(b.id.as_str()));
    assert_eq!(app.epoch, old_epoch + 1);
    let demoted = app.instances.iter().find(|i| i.id == p.id).unwrap();
    assert_eq!(demoted.role, Role::Backup);
    assert_eq!(demoted.pid, p.pid, "a switchover restarts nothing");

    // Never two at once: the old primary's demotion precedes the promotion,
    // as both components recorded it themselves.
    let t = |id: &str, role: &str, epoch: u64| {
        up.journal(id)
            .iter()
            .find(|l| l["event"] == "role" && l["role"] == role && l["epoch"] == epoch)
            .and_then(|l| l["t_ms"].as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "{id} has no {role} line at epoch {epoch}: {:?}",
                    up.journal(id)
                )
            })
    };
    let demoted_at = t(&p.id, "backup", old_epoch);
    let promoted_at = t(&b.id, "primary", old_epoch + 1);
    assert!(
        demoted_at <= promoted_at,
        "promoted at {promoted_at} before demotion at {demoted_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_an_unfit_or_unknown_target_is_refused_and_changes_nothing() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let before = up.app("web").await;

    // Unknown target: refused before anything is recorded.
    match up
        .client()
        .switchover("web", Some("zz"), Duration::from_secs(5))
        .await
    {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 400);
            assert!(message.contains("zz"), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // Unknown app.
    match up
        .client()
        .switchover("nope", None, Duration::from_secs(5))
        .await
    {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("expected a 404, got {other:?}"),
    }

    // An unhealthy target: the controller refuses with the reason.
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/unhealthy", up.port_of(&b.id)))
        .send()
        .await
        .expect("make the backup unhealthy");
    up.wait_for("the backup unhealthy", 10, |a| {
        a.instances
            .iter()
            .any(|i| i.id == b.id && i.health == Health::Unhealthy)
    })
    .await;
    let outcome = up
        .client()
        .switchover("web", Some(&b.id), Duration::from_secs(10))
        .await
        .expect("answer");
    match outcome {
        SwitchoverOutcome::Refused { reason, .. } => {
            assert!(reason.contains("not fit"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = up.app("web").await;
    assert_eq!(after.primary.as_deref(), Some(p.id.as_str()));
    assert_eq!(after.epoch, before.epoch);

    // The CLI says the same in one line and exits non-zero.
    let out = std::process::Command::new(common::tandem())
        .args(["switchover", "web", "--to", &b.id, "--api", &up.api])
        .output()
        .expect("run tandem switchover");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("not fit"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_instance_and_exits_zero() {
    let mut up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let pids = [p.pid.unwrap(), b.pid.unwrap()];
    let status = up.terminate();
    assert!(status.success(), "exit status {status}\n{}", up.log());
    for pid in pids {
        assert!(!alive(pid), "instance pid {pid} survived tandem up");
    }
    assert!(up.log().contains("stopped."), "{}", up.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_a_table_and_the_api_document() {
    let up = Up::pair();
    up.wait_pair().await;
    let out = std::process::Command::new(common::tandem())
        .args(["status", "--api", &up.api])
        .output()
        .expect("tandem status");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ROLE") && text.contains("primary") && text.contains("backup"),
        "{text}"
    );

    let out = std::process::Command::new(common::tandem())
        .args(["status", "--json"])
        .env("TANDEM_API", &up.api)
        .output()
        .expect("tandem status --json");
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let inst = &doc["apps"][0]["instances"][0];
    for field in ["id", "host", "role", "epoch", "pid", "health"] {
        assert!(inst.get(field).is_some(), "missing {field} in {inst}");
    }
    assert_eq!(doc["apps"][0]["name"], "web");
    assert_eq!(doc["apps"][0]["ha"], "warm-standby");
}

#[test]
fn client_commands_fail_with_one_clear_line_when_no_api_answers() {
    let port = common::free_port();
    let out = std::process::Command::new(common::tandem())
        .args(["status", "--api", &format!("127.0.0.1:{port}")])
        .output()
        .expect("tandem status");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}
