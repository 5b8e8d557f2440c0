//! The fenced-sink suite against [`PostgresSink`] on a real PostgreSQL
//! server, started by this test binary in a temporary directory and stopped
//! when it exits (see `support/pg.rs`). Each writer has its own connection.
#![allow(clippy::disallowed_methods)] // tests keep time: pacing and deadlines

#[macro_use]
#[path = "support/suite.rs"]
mod suite;
#[path = "support/pg.rs"]
mod pg;

use tandem_sink::{PostgresSink, Record, UnfencedPostgresSink};

/// The shared cluster; tables are named after the tests.
struct Postgres {
    conninfo: &'static str,
}

impl Postgres {
    fn new() -> Postgres {
        Postgres {
            conninfo: &pg::shared(false).conninfo,
        }
    }
}

impl suite::Harness for Postgres {
    type S = PostgresSink;

    fn open(&self, table: &str) -> PostgresSink {
        PostgresSink::connect(self.conninfo, table)
            .unwrap_or_else(|e| panic!("connect {table}: {e}"))
    }

    fn write_unfenced(&self, table: &str, epoch: u64, records: &[Record]) {
        let mut sink = UnfencedPostgresSink::connect(self.conninfo, table)
            .unwrap_or_else(|e| panic!("connect {table}: {e}"));
        sink.write(epoch, records)
            .unwrap_or_else(|e| panic!("unfenced write: {e}"));
    }

    fn cases(&self) -> u32 {
        16
    }
}

sink_suite!(Postgres::new());

#[test]
fn bad_table_names_are_refused_before_connecting() {
    // A conninfo that would fail: the name is checked first.
    let err = PostgresSink::connect("host=127.0.0.1 port=1", "x\"; DROP TABLE y; --")
        .expect_err("refused");
    assert!(matches!(err, tandem_sink::SinkError::Invalid(_)), "{err}");
}

#[test]
fn an_unreachable_server_is_a_backend_error() {
    let err = PostgresSink::connect("host=127.0.0.1 port=1 connect_timeout=2", "stats")
        .expect_err("refused");
    assert!(matches!(err, tandem_sink::SinkError::Backend(_)), "{err}");
}

#[test]
fn a_killed_connection_is_a_backend_error_and_a_reconnect_with_the_same_epoch_resumes() {
    use tandem_sink::{FencedWriter, Sink, SinkError};
    let cluster = pg::shared(false);
    // A database of its own, so that killing its connections touches no other test.
    let mut admin =
        postgres::Client::connect(&cluster.conninfo, postgres::NoTls).expect("admin connection");
    admin
        .batch_execute("CREATE DATABASE tandem_killed")
        .expect("create database");
    let conninfo = cluster
        .conninfo
        .replace("dbname=tandem", "dbname=tandem_killed");
    let connect =
        || PostgresSink::connect(&conninfo, "killed").unwrap_or_else(|e| panic!("connect: {e}"));

    let (mut writer, _) = FencedWriter::take_over(connect(), 4).expect("take over");
    writer.write(&suite::records(0, 5)).expect("write 0..5");
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tandem_killed'",
            &[],
        )
        .expect("terminate the writer's backend");
    assert_eq!(killed.len(), 1, "one backend: the writer's");
    match writer.write(&suite::records(5, 8)) {
        Err(SinkError::Backend(_)) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
    // The same primary reconnects and resumes with its epoch.
    let (mut again, resume) = FencedWriter::take_over(connect(), 4).expect("take over again");
    assert_eq!(resume, Some(4));
    again.write(&suite::records(0, 8)).expect("write on");
    suite::assert_exactly_once(again.sink_mut(), 8);
    assert_eq!(
        again.sink_mut().last_position().expect("last position"),
        Some(7)
    );
}
