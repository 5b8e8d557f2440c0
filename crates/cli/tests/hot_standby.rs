//! Hot standby end to end: a statistics source, a pair of aggregators under
//! `tandem up`, the primary killed with SIGKILL at random moments while the
//! stream flows, at least 20 takeovers. The sink itself (SQLite, and a real
//! PostgreSQL server) must hold every record exactly once, in order, with
//! epochs that never go down.
#![allow(clippy::disallowed_methods)]

mod common;
// The sink crate's throwaway PostgreSQL server (one per test process).
#[path = "../../sink/tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Up, free_port, signal};
use tandem_api::types::{AppDoc, Health, Role};
use tandem_sink::{PostgresSink, Sink, SqliteSink};

const RECORDS: u64 = 12_000;
const TABLE: &str = "stats";
const TAKEOVERS: usize = 22;

fn topology(stats_port: u16, ports: [u16; 2], sink: &str) -> String {
    format!(
        r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[apps.stats]
ha = "none"
command = ["tandem", "demo-stats", "--port", "{{ports.http}}", "--rate", "1000", "--count", "{RECORDS}"]

[[apps.stats.instances]]
id = "s1"
host = "local"
ports = {{ http = {stats_port} }}

[apps.agg]
ha = "hot-standby"
command = ["tandem", "demo-aggregator", "--port", "{{ports.http}}", "--source", "http://127.0.0.1:{stats_port}", "--sink", "{sink}", "--table", "{table}", "--batch", "50"]

[apps.agg.restart]
initial_backoff = "50ms"
stable_after = "500ms"
crashloop_after = 1000

[[apps.agg.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
failures_before_unhealthy = 2
successes_before_healthy = 1

[apps.agg.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "300ms"

[[apps.agg.instances]]
id = "a"
host = "local"
priority = 10
ports = {{ http = {pa} }}

[[apps.agg.instances]]
id = "b"
host = "local"
ports = {{ http = {pb} }}
"#,
        table = TABLE,
        pa = ports[0],
        pb = ports[1],
    )
}

/// A small deterministic generator: the seed is printed, so a failing run
/// can be repeated.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn ready(a: &AppDoc) -> bool {
    a.primary.is_some()
        && a.instances.len() == 2
        && a.instances.iter().all(|i| i.health == Health::Healthy)
        && a.instances.iter().any(|i| i.role == Role::Backup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_written_exactly_once_across_twenty_takeovers_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("agg.db");
    let spec = format!("sqlite:{}", db.display());
    takeovers(dir, &spec, move || {
        Box::new(SqliteSink::open(&db, TABLE).expect("open sink"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_written_exactly_once_across_twenty_takeovers_postgres() {
    // The harness uses PostgreSQL's blocking client: not on the runtime.
    let conninfo = tokio::task::spawn_blocking(|| pg::shared(false).conninfo.clone())
        .await
        .expect("start PostgreSQL");
    let spec = format!("postgres:{conninfo}");
    let dir = tempfile::tempdir().expect("tempdir");
    takeovers(dir, &spec, move || {
        Box::new(PostgresSink::connect(&conninfo, TABLE).expect("connect sink"))
    })
    .await;
}

/// Runs the pair on `sink_spec`, kills the primary TAKEOVERS times, and
/// checks the sink (opened with `open`, outside the runtime's threads).
async fn takeovers(
    dir: tempfile::TempDir,
    sink_spec: &str,
    open: impl Fn() -> Box<dyn Sink> + Send + 'static,
) {
    let seed = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (TANDEM_TEST_SEED={seed} repeats this run)");
    let mut rng = Lcg(seed);
    let topo = dir.path().join("hot.toml");
    std::fs::write(
        &topo,
        topology(free_port(), [free_port(), free_port()], sink_spec),
    )
    .expect("write");
    let up = Up::start_in(dir, topo, [0, 0]);

    let first = up
        .wait_for_app(
            "agg",
            "a primary aggregator and a healthy backup",
            30,
            ready,
        )
        .await;
    let mut epoch = first.epoch;
    for round in 0..TAKEOVERS {
        let doc = up
            .wait_for_app("agg", "the pair ready again", 30, ready)
            .await;
        // Let the stream flow a random while, then kill the primary.
        tokio::time::sleep(Duration::from_millis(50 + rng.next(400))).await;
        let holder = doc
            .instances
            .iter()
            .find(|i| i.role == Role::Primary)
            .expect("primary");
        signal(holder.pid.expect("pid"), "KILL");
        let after = up
            .wait_for_app("agg", "a takeover", 30, |a| {
                a.primary.is_some() && a.epoch > doc.epoch
            })
            .await;
        assert!(
            after.epoch > epoch,
            "round {round}: epoch {} after {epoch}",
            after.epoch
        );
        epoch = after.epoch;
    }
    assert!(epoch >= first.epoch + TAKEOVERS as u64);

    // Wait for the whole stream to reach the sink, then read it back. The
    // sinks are synchronous clients: use them off the runtime's threads.
    let rows = tokio::task::spawn_blocking(move || {
        let mut sink = open();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if sink.last_position().expect("last position") == Some(RECORDS - 1) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the sink never reached {RECORDS} records"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(sink.rows(0, RECORDS as usize + 10).expect("rows"))
    })
    .await
    .expect("reader task")
    .unwrap_or_else(|e| panic!("{e} (seed {seed})\n{}", up.log()));
    assert_eq!(rows.len() as u64, RECORDS, "seed {seed}");
    let mut last_epoch = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row.position, i as u64,
            "a gap or a duplicate at {i} (seed {seed})"
        );
        assert_eq!(row.payload, format!("stat-{i}").into_bytes(), "seed {seed}");
        assert!(
            row.epoch >= last_epoch,
            "epoch went down at {i} (seed {seed})"
        );
        last_epoch = row.epoch;
    }
    let writers: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.epoch).collect();
    assert!(
        writers.len() >= 10,
        "only {} epochs wrote: {writers:?} (seed {seed})",
        writers.len()
    );
}
