//! The fenced-sink suite against [`SqliteSink`]: a real database file per
//! test, in WAL mode, each writer with its own connection.
#![allow(clippy::disallowed_methods)] // tests keep time: pacing and deadlines

#[macro_use]
#[path = "support/suite.rs"]
mod suite;

use tandem_sink::{Record, SqliteSink, UnfencedSqliteSink};

/// A temporary directory with one database file per table.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::Builder::new()
                .prefix("tandem-sink-")
                .tempdir()
                .expect("create a temporary directory"),
        }
    }

    fn path(&self, table: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{table}.db"))
    }
}

impl suite::Harness for Sqlite {
    type S = SqliteSink;

    fn open(&self, table: &str) -> SqliteSink {
        SqliteSink::open(&self.path(table), table).unwrap_or_else(|e| panic!("open {table}: {e}"))
    }

    fn write_unfenced(&self, table: &str, epoch: u64, records: &[Record]) {
        let mut sink = UnfencedSqliteSink::open(&self.path(table), table)
            .unwrap_or_else(|e| panic!("open {table}: {e}"));
        sink.write(epoch, records)
            .unwrap_or_else(|e| panic!("unfenced write: {e}"));
    }

    fn cases(&self) -> u32 {
        16
    }
}

sink_suite!(Sqlite::new());

#[test]
fn two_sinks_in_one_file_are_independent() {
    use tandem_sink::Sink;
    let h = Sqlite::new();
    let path = h.path("shared");
    let mut a = SqliteSink::open(&path, "stats_a").expect("open stats_a");
    let mut b = SqliteSink::open(&path, "stats_b").expect("open stats_b");
    a.claim(5).expect("claim a");
    assert_eq!(b.claim(1).expect("claim b"), None, "b has its own fence");
    a.write(5, &suite::records(0, 3)).expect("write a");
    assert_eq!(b.last_position().expect("b's position"), None);
}

#[test]
fn bad_table_names_are_refused_before_touching_the_file() {
    let h = Sqlite::new();
    for bad in ["x; DROP TABLE y", "Stats", "", "sqlite_master"] {
        let err = SqliteSink::open(&h.path("bad"), bad).expect_err("a bad name is refused");
        assert!(
            matches!(err, tandem_sink::SinkError::Invalid(_)),
            "{bad:?}: {err}"
        );
    }
    assert!(!h.path("bad").exists());
}
