//! Children must die with their agent and only with it: the kernel sends
//! `PR_SET_PDEATHSIG` when the *thread* that forked a child ends, and a
//! tokio runtime ends idle threads (blocking-pool threads, and workers
//! that entered `block_in_place`, as the embedded store does) after their
//! keep-alive.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use tandem_agent::process::{Paths, spawn};
use tandem_core::model::Role;

const TOPOLOGY: &str = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[apps.s]
ha = "none"
command = ["sleep", "600"]

[[apps.s.instances]]
id = "a"
host = "h1"
"#;

#[test]
fn children_outlive_the_runtime_threads_that_forked_them() {
    let keep_alive = Duration::from_millis(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(keep_alive)
        .enable_all()
        .build()
        .expect("runtime");
    let topology = tandem_core::topology::parse("t.toml", TOPOLOGY).expect("topology");
    let app = topology.app("s").expect("app").clone();
    let instance = app.instances[0].clone();
    let host = topology.host("h1").expect("host").clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths::create(dir.path()).expect("paths");

    runtime.block_on(async {
        let mut children = Vec::new();
        // Bursts of starts, each from a thread of the blocking pool and
        // from a worker inside block_in_place: both kinds of thread end
        // once idle for the keep-alive.
        for _ in 0..4 {
            let (a, i, h, p) = (app.clone(), instance.clone(), host.clone(), paths.clone());
            let burst = tokio::task::spawn_blocking(move || {
                (0..5)
                    .map(|_| {
                        let start = spawn(&a, &i, &h, Role::Active, 0, &p, None);
                        tokio::runtime::Handle::current().block_on(start)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("blocking task");
            children.extend(burst.into_iter().map(|c| c.expect("spawn")));
            let (a, i, h, p) = (app.clone(), instance.clone(), host.clone(), paths.clone());
            let burst = tokio::spawn(async move {
                tokio::task::block_in_place(|| {
                    (0..5)
                        .map(|_| {
                            let start = spawn(&a, &i, &h, Role::Active, 0, &p, None);
                            tokio::runtime::Handle::current().block_on(start)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await
            .expect("block_in_place task");
            children.extend(burst.into_iter().map(|c| c.expect("spawn")));
        }
        // Well past the keep-alive: the threads that forked them are gone.
        let until = Instant::now() + keep_alive * 15;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for child in &mut children {
                let exited = child.try_wait().expect("try_wait");
                assert!(
                    exited.is_none(),
                    "a child nothing faulted exited: {exited:?} (pid {:?})",
                    child.id()
                );
            }
        }
        for child in &mut children {
            child.kill().await.expect("kill");
        }
    });
}
