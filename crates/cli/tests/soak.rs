//! Left alone, nothing happens: no instance exits that nothing faulted.
//!
//! Children get `PR_SET_PDEATHSIG`, which the kernel sends when the
//! *thread* that forked them ends; a tokio runtime ends idle threads after
//! 10 s. These tests run the real `tandem up` for longer than that.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Up;
use tandem_api::types::{EventKind, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_in_a_burst_outlive_the_runtimes_idle_threads() {
    // Enough that a start queued behind a burst of others would show.
    let n = 200;
    let up = Up::topology(&tandem_demo::topology::sleepers(
        n,
        &[("h1", "127.0.0.1"), ("h2", "127.0.0.2")],
    ));
    // Every primary serving: 2n processes started in one burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pids = loop {
        let status = up.status().await;
        let serving = status.apps.iter().filter(|a| a.primary.is_some()).count();
        if serving == n {
            break status
                .apps
                .iter()
                .flat_map(|a| {
                    a.instances
                        .iter()
                        .map(move |i| (format!("{}/{}", a.name, i.id), (i.pid, i.role)))
                })
                .collect::<BTreeMap<_, _>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {serving} of {n} apps have a primary\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pids.values().all(|(pid, _)| pid.is_some()));

    // Twice the runtime's idle-thread keep-alive (10 s), and more.
    tokio::time::sleep(Duration::from_secs(25)).await;

    let events = up
        .client()
        .events(None, Some(10_000))
        .await
        .expect("events");
    let exits: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::InstanceExited | EventKind::PrimaryFailed | EventKind::CrashLoop
            )
        })
        .map(|e| e.message.clone())
        .collect();
    assert!(
        exits.is_empty(),
        "{} exits nothing caused: {exits:#?}",
        exits.len()
    );
    let status = up.status().await;
    for app in &status.apps {
        for i in &app.instances {
            let name = format!("{}/{}", app.name, i.id);
            assert_eq!(
                (i.pid, i.role),
                pids[&name],
                "{name} changed pid or role with nothing faulted"
            );
            assert_eq!(i.restarts, Some(0), "{name} restarted");
            assert!(matches!(i.role, Role::Primary | Role::Backup));
        }
    }
}
