//! Records per second through the fenced writer against a plain INSERT, for
//! batches of 1, 10 and 100, on SQLite and PostgreSQL, and their ratio (the
//! cost of fencing).
//!
//! ```text
//! cargo run --release -p tandem-sink --example throughput [-- SECONDS_PER_RUN]
//! ```
//!
//! SQLite writes a file in a temporary directory (WAL, `synchronous=FULL`).
//! PostgreSQL is the server named by `TANDEM_SINK_PG` (a conninfo string), or
//! else a throwaway local cluster started for the run (`fsync=on`), which
//! needs `apt-get install postgresql`. Every write is its own commit.
#![allow(clippy::disallowed_methods)] // a benchmark keeps time

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use tandem_sink::{
    FencedWriter, PostgresSink, Record, SinkError, SqliteSink, UnfencedPostgresSink,
    UnfencedSqliteSink,
};

/// Batch sizes measured.
const BATCHES: [u64; 3] = [1, 10, 100];
/// Bytes of each record's payload (a statistics row's size).
const PAYLOAD_BYTES: usize = 64;
/// Default time spent on each (sink, batch, fenced?) run.
const DEFAULT_SECONDS: f64 = 1.5;

fn main() -> Result<(), SinkError> {
    let seconds = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let budget = Duration::from_secs_f64(seconds);
    let dir = tempfile::Builder::new()
        .prefix("tandem-sink-bench-")
        .tempdir()
        .map_err(|e| SinkError::Backend(format!("temporary directory: {e}")))?;
    let conninfo = match std::env::var("TANDEM_SINK_PG") {
        Ok(conninfo) => conninfo,
        Err(_) => pg::shared(true).conninfo.clone(),
    };

    println!("{seconds} s per run; every batch is one commit; payload {PAYLOAD_BYTES} bytes");
    println!(
        "{:<10} {:>6} {:>14} {:>14} {:>8}",
        "sink", "batch", "fenced rec/s", "plain rec/s", "ratio"
    );
    for batch in BATCHES {
        let db = dir.path().join(format!("bench_{batch}.db"));
        let fenced = {
            let sink = SqliteSink::open(&db, &format!("fenced_{batch}"))?;
            let (mut writer, _) = FencedWriter::take_over(sink, 1)?;
            measure(budget, batch, |records| writer.write(records).map(|_| ()))?
        };
        let plain = {
            let mut sink = UnfencedSqliteSink::open(&db, &format!("plain_{batch}"))?;
            measure(budget, batch, |records| sink.write(1, records))?
        };
        report("sqlite", batch, fenced, plain);
    }
    for batch in BATCHES {
        let fenced = {
            let sink = PostgresSink::connect(&conninfo, &format!("bench_fenced_{batch}"))?;
            let (mut writer, _) = FencedWriter::take_over(sink, 1)?;
            measure(budget, batch, |records| writer.write(records).map(|_| ()))?
        };
        let plain = {
            let mut sink =
                UnfencedPostgresSink::connect(&conninfo, &format!("bench_plain_{batch}"))?;
            measure(budget, batch, |records| sink.write(1, records))?
        };
        report("postgres", batch, fenced, plain);
    }
    Ok(())
}

/// Writes batches of `batch` records from position 0 on for about `budget`;
/// returns records per second.
fn measure(
    budget: Duration,
    batch: u64,
    mut write: impl FnMut(&[Record]) -> Result<(), SinkError>,
) -> Result<f64, SinkError> {
    let payload = vec![0x5a; PAYLOAD_BYTES];
    let mut next = 0;
    let start = Instant::now();
    while start.elapsed() < budget {
        let records: Vec<Record> = (next..next + batch)
            .map(|position| Record {
                position,
                payload: payload.clone(),
            })
            .collect();
        write(&records)?;
        next += batch;
    }
    Ok(next as f64 / start.elapsed().as_secs_f64())
}

fn report(sink: &str, batch: u64, fenced: f64, plain: f64) {
    println!(
        "{sink:<10} {batch:>6} {fenced:>14.0} {plain:>14.0} {:>8.2}",
        fenced / plain
    );
}
