//! The hot-standby fenced writer: what a hot-standby component (the WFM Data
//! Aggregator is the reference case) uses to write its output to a database
//! so that every input record is written exactly once across any number of
//! takeovers (invariant 4), and a deposed primary can never write again
//! (invariant 2), even while it is still running and trying (the zombie).
//!
//! It sits beside the `client` library: tandem hands each new primary a
//! strictly higher **epoch** with its role; this crate turns that epoch into
//! a fence *inside the sink*, so safety does not depend on the old primary
//! noticing that it was deposed.
//!
//! # How it works
//!
//! The input is a numbered stream: each [`Record`] has a `position` (a `u64`,
//! strictly increasing by one, from 0: the first record a sink ever takes is
//! position 0). Next to the data, the sink keeps a one-row
//! **fence**: the highest epoch registered and the last committed position.
//! Every write checks and updates the fence *in the same transaction* that
//! inserts the rows, so:
//!
//! * a write whose epoch is below the fence's epoch writes nothing
//!   ([`SinkError::Fenced`]);
//! * a write whose first position is not exactly the last committed position
//!   plus one writes nothing ([`SinkError::OutOfOrder`]): no gap, no overlap;
//! * the rows and the new (epoch, position) commit together or not at all, so
//!   the position a new primary reads back is exactly what is in the table.
//!
//! [`SqliteSink`] and [`PostgresSink`] implement [`Sink`]; each documents the
//! transaction it runs and why concurrent writers serialize on the fence.
//!
//! # How a hot backup uses it
//!
//! A hot backup consumes the same stream as the primary, into a bounded
//! buffer keyed by position (it drops the oldest records when full), but does
//! not write. When tandem promotes it with epoch `E`:
//!
//! 1. it calls [`FencedWriter::take_over`]`(sink, E)`: this registers `E` in
//!    the fence (from now on every lower epoch is rejected, so the old primary
//!    cannot write one more row) and returns `P`, the last committed position
//!    (`None` if nothing was ever written);
//! 2. it drops the buffered records at or below `P` ([`FencedWriter::write`]
//!    also skips them, so passing the whole buffer is fine);
//! 3. it writes from `P + 1` on; if its buffer starts after `P + 1` (the
//!    buffer overflowed, or the backup started late), it first replays
//!    `P + 1 ..` from the source, since a gap is refused
//!    ([`SinkError::OutOfOrder`]).
//!
//! ```no_run
//! use tandem_sink::{FencedWriter, Record, SinkError, SqliteSink};
//! # fn demo(epoch: u64, buffer: Vec<Record>) -> Result<(), SinkError> {
//! let sink = SqliteSink::open(std::path::Path::new("stats.db"), "stats")?;
//! let (mut writer, resume_after) = FencedWriter::take_over(sink, epoch)?;
//! tracing::info!(?resume_after, "took over");
//! // The buffer may overlap what the old primary committed: overlap is skipped.
//! let outcome = writer.write(&buffer)?;
//! println!("wrote {}, skipped {}", outcome.written, outcome.skipped);
//! # Ok(())
//! # }
//! ```
//!
//! On [`SinkError::Fenced`] the writer must stop acting as primary: a newer
//! primary exists. After [`SinkError::Backend`], retry the same batch: the
//! writer first reads back what was committed (a commit whose acknowledgment
//! was lost is not written twice). If the backend keeps failing (a
//! PostgreSQL connection that died), open a new sink and take over again
//! with the *same* epoch: see below.
//!
//! # Epochs that are equal
//!
//! A claim or a write with an epoch *equal* to the fence's is accepted: an
//! epoch names one primary term, so the same primary restarting (or
//! reconnecting) with its epoch resumes where it stopped. tandem never hands
//! one epoch to two instances (invariant 1); even if it did, the position
//! check would still keep every record exactly once. A write with an epoch
//! *above* the fence's is accepted too and raises the fence (a write is an
//! implicit claim).
//!
//! # Blocking
//!
//! The API is synchronous. From async code, run it on a blocking thread
//! (`tokio::task::spawn_blocking`): [`PostgresSink`] uses the `postgres`
//! crate's blocking client, which panics if called from inside a runtime.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // a database client keeps time: busy and statement timeouts

mod postgres_sink;
mod sqlite_sink;

use serde::{Deserialize, Serialize};

pub use postgres_sink::{PostgresSink, UnfencedPostgresSink};
pub use sqlite_sink::{SqliteSink, UnfencedSqliteSink};

/// One record of the input stream, as written to the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the input stream: strictly increasing by one, at most `i64::MAX`.
    pub position: u64,
    /// The bytes to store.
    pub payload: Vec<u8>,
}

/// One row read back from a sink's data table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRow {
    /// Position in the input stream.
    pub position: u64,
    /// Epoch of the writer that committed the row.
    pub epoch: u64,
    /// The stored bytes.
    pub payload: Vec<u8>,
}

/// Why a sink refused or failed a claim or a write. Nothing of a failed write
/// was committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// A higher epoch has been registered: this writer was deposed and must
    /// stop acting as primary.
    #[error("fenced: epoch {epoch} is below the sink's epoch {current}")]
    Fenced {
        /// The epoch this writer used.
        epoch: u64,
        /// The highest epoch registered in the sink.
        current: u64,
    },
    /// The batch does not follow on from the last committed position (or has
    /// a gap inside): writing it would lose or duplicate records.
    #[error("out of order: expected position {expected}, got {got}")]
    OutOfOrder {
        /// The position that would follow on.
        expected: u64,
        /// The position the batch had there.
        got: u64,
    },
    /// The data table already holds a position of the batch although the
    /// fence said otherwise: a bug (or rows written outside the fence).
    #[error("duplicate position in the sink (rows written outside the fence?): {0}")]
    Duplicate(String),
    /// The caller passed something the sink cannot store: a table name that
    /// is not a plain identifier, or a position or epoch above `i64::MAX`.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The database failed (connection, I/O, timeout, lock wait). A failed
    /// write committed nothing, unless only its acknowledgment was lost;
    /// [`FencedWriter::write`] finds out before its next write, so retrying
    /// the same batch through it is safe.
    #[error("sink backend: {0}")]
    Backend(String),
}

/// Where a fenced writer writes. Implementations store each batch, the epoch
/// and the input position atomically.
///
/// # Correctness
///
/// `write` must check the fence, insert the rows and update the fence in one
/// transaction that concurrent writers (other connections, other processes)
/// cannot interleave with: two writers must never both pass the check for
/// the same position, and a writer must never pass it after a higher epoch
/// was claimed.
pub trait Sink: Send {
    /// Registers `epoch` as the writer's epoch: fails with
    /// [`SinkError::Fenced`] if a higher epoch has already been registered;
    /// otherwise records it as the highest (so every lower-epoch writer is
    /// fenced from now on) and returns the last committed position (`None`
    /// if nothing was written yet). An equal epoch is accepted.
    fn claim(&mut self, epoch: u64) -> Result<Option<u64>, SinkError>;

    /// Writes `records` atomically with (epoch, last position): fails with
    /// [`SinkError::Fenced`], writing nothing, if the sink's highest epoch is
    /// above `epoch`; fails with [`SinkError::OutOfOrder`] if the first
    /// record's position is not exactly the last committed position plus one
    /// (0 when nothing was written yet), or on any gap inside the batch. An
    /// empty batch writes nothing but is still checked against the fence.
    fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError>;

    /// The last committed position (for checks).
    fn last_position(&mut self) -> Result<Option<u64>, SinkError>;

    /// Reads back at most `limit` committed rows from position `from` on, in
    /// position order (for checks and tests).
    fn rows(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRow>, SinkError>;
}

/// What one [`FencedWriter::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Records committed by this call.
    pub written: usize,
    /// Records skipped because they were already committed.
    pub skipped: usize,
    /// The last committed position after this call.
    pub last_committed: Option<u64>,
}

/// A primary's writer: a sink claimed with the primary's epoch, and the last
/// position committed, so that it can skip what is already there.
#[derive(Debug)]
pub struct FencedWriter<S: Sink> {
    sink: S,
    epoch: u64,
    committed: Option<u64>,
    /// The last write failed in the backend: it may have committed all the
    /// same (a lost acknowledgment), so `committed` must be read again.
    uncertain: bool,
}

impl<S: Sink> FencedWriter<S> {
    /// Takes over: claims `epoch` in the sink (fencing every lower epoch from
    /// now on) and returns the writer with the position to resume after
    /// (`None`: start from position 0).
    pub fn take_over(mut sink: S, epoch: u64) -> Result<(FencedWriter<S>, Option<u64>), SinkError> {
        let committed = sink.claim(epoch).inspect_err(|e| {
            tracing::warn!(epoch, error = %e, "take-over refused by the sink");
        })?;
        tracing::info!(
            epoch,
            resume_after = ?committed,
            "took over the sink: every lower epoch is fenced"
        );
        Ok((
            FencedWriter {
                sink,
                epoch,
                committed,
                uncertain: false,
            },
            committed,
        ))
    }

    /// Writes a batch (positions must follow on, one by one). Records at or
    /// below the committed position are skipped (a backup replaying from its
    /// buffer after takeover), so callers can pass what they have; a batch
    /// with nothing new does not reach the sink.
    ///
    /// After a [`SinkError::Backend`] error the batch may or may not have
    /// been committed (the acknowledgment can be lost with the connection):
    /// the next call first reads the committed position back from the sink,
    /// so retrying the same batch writes each record once either way.
    pub fn write(&mut self, records: &[Record]) -> Result<WriteOutcome, SinkError> {
        check_batch(records)?;
        if self.uncertain {
            self.committed = self.sink.last_position()?;
            self.uncertain = false;
            tracing::info!(epoch = self.epoch, last_committed = ?self.committed, "read the committed position back after a backend error");
        }
        let skipped = match self.committed {
            None => 0,
            Some(committed) => records.partition_point(|r| r.position <= committed),
        };
        let fresh = &records[skipped..];
        let Some(last) = fresh.last() else {
            return Ok(WriteOutcome {
                written: 0,
                skipped,
                last_committed: self.committed,
            });
        };
        match self.sink.write(self.epoch, fresh) {
            Ok(()) => {
                self.committed = Some(last.position);
                tracing::debug!(
                    epoch = self.epoch,
                    written = fresh.len(),
                    skipped,
                    last = last.position,
                    "batch committed"
                );
                Ok(WriteOutcome {
                    written: fresh.len(),
                    skipped,
                    last_committed: self.committed,
                })
            }
            Err(e) => {
                if matches!(e, SinkError::Backend(_)) {
                    self.uncertain = true;
                }
                if let SinkError::Fenced { current, .. } = e {
                    tracing::warn!(
                        epoch = self.epoch,
                        current,
                        "write refused: this writer was deposed by a higher epoch"
                    );
                }
                Err(e)
            }
        }
    }

    /// The epoch this writer claimed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last position this writer knows to be committed.
    pub fn last_committed(&self) -> Option<u64> {
        self.committed
    }

    /// The sink, for reads.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> S {
        self.sink
    }
}

/// Longest table name: the fence table `{table}_fence` must fit PostgreSQL's
/// 63-byte identifiers (longer ones are silently truncated).
pub const MAX_TABLE_NAME_LEN: usize = 63 - "_fence".len();

/// Checks that `table` is a plain identifier (`[a-z_][a-z0-9_]*`, at most
/// [`MAX_TABLE_NAME_LEN`] bytes, not starting with `sqlite_`): the only thing
/// ever put into SQL text.
pub fn validate_table(table: &str) -> Result<&str, SinkError> {
    let mut chars = table.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok {
        return Err(SinkError::Invalid(format!(
            "table name {table:?} is not an identifier: expected [a-z_][a-z0-9_]*"
        )));
    }
    if table.len() > MAX_TABLE_NAME_LEN {
        return Err(SinkError::Invalid(format!(
            "table name {table:?} is longer than {MAX_TABLE_NAME_LEN} bytes"
        )));
    }
    if table.starts_with("sqlite_") {
        return Err(SinkError::Invalid(format!(
            "table name {table:?} is reserved by SQLite"
        )));
    }
    Ok(table)
}

/// Checks a batch before it reaches a database: positions follow on one by
/// one and fit in a signed 64-bit column.
pub(crate) fn check_batch(records: &[Record]) -> Result<(), SinkError> {
    for pair in records.windows(2) {
        let expected = pair[0]
            .position
            .checked_add(1)
            .ok_or_else(|| out_of_range("position", pair[0].position))?;
        if pair[1].position != expected {
            return Err(SinkError::OutOfOrder {
                expected,
                got: pair[1].position,
            });
        }
    }
    if let Some(last) = records.last() {
        to_db(last.position, "position")?;
    }
    Ok(())
}

/// The position that must come next after `last`.
pub(crate) fn next_position(last: Option<u64>) -> u64 {
    last.map_or(0, |p| p + 1)
}

fn out_of_range(what: &str, value: u64) -> SinkError {
    SinkError::Invalid(format!("{what} {value} is above {}", i64::MAX))
}

/// A `u64` as the signed 64-bit integer both databases store.
pub(crate) fn to_db(value: u64, what: &str) -> Result<i64, SinkError> {
    i64::try_from(value).map_err(|_| out_of_range(what, value))
}

/// A stored signed 64-bit integer back as a `u64`.
pub(crate) fn from_db(value: i64, what: &str) -> Result<u64, SinkError> {
    u64::try_from(value)
        .map_err(|_| SinkError::Backend(format!("negative {what} {value} in the sink")))
}

/// The check every `claim` makes against the fence row it read.
pub(crate) fn check_claim(epoch: u64, current: u64) -> Result<(), SinkError> {
    if current > epoch {
        return Err(SinkError::Fenced { epoch, current });
    }
    Ok(())
}

/// The check every `write` makes against the fence row it read.
pub(crate) fn check_write(
    epoch: u64,
    current: u64,
    last: Option<u64>,
    records: &[Record],
) -> Result<(), SinkError> {
    check_claim(epoch, current)?;
    if let Some(first) = records.first() {
        let expected = next_position(last);
        if first.position != expected {
            return Err(SinkError::OutOfOrder {
                expected,
                got: first.position,
            });
        }
    }
    Ok(())
}

/// The check a claim makes that no row lies beyond the fence's position (rows
/// written outside the fence). Rows below it may have been pruned.
pub(crate) fn check_rows_within_fence(
    fence_position: Option<u64>,
    max_row: Option<u64>,
) -> Result<(), SinkError> {
    match (max_row, fence_position) {
        (Some(row), None) => Err(SinkError::Duplicate(format!(
            "the data table holds position {row} but the fence says nothing was committed"
        ))),
        (Some(row), Some(fence)) if row > fence => Err(SinkError::Duplicate(format!(
            "the data table holds position {row} beyond the fence's last committed position {fence}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(positions: std::ops::Range<u64>) -> Vec<Record> {
        positions
            .map(|position| Record {
                position,
                payload: vec![],
            })
            .collect()
    }

    /// A sink in memory whose next write can commit and then fail (a lost
    /// acknowledgment).
    #[derive(Default)]
    struct MemorySink {
        epoch: u64,
        rows: Vec<StoredRow>,
        lose_next_ack: bool,
    }

    impl Sink for MemorySink {
        fn claim(&mut self, epoch: u64) -> Result<Option<u64>, SinkError> {
            check_claim(epoch, self.epoch)?;
            self.epoch = epoch;
            self.last_position()
        }

        fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
            check_batch(records)?;
            check_write(epoch, self.epoch, self.last_position()?, records)?;
            self.epoch = epoch;
            self.rows.extend(records.iter().map(|r| StoredRow {
                position: r.position,
                epoch,
                payload: r.payload.clone(),
            }));
            if std::mem::take(&mut self.lose_next_ack) {
                return Err(SinkError::Backend("connection reset".into()));
            }
            Ok(())
        }

        fn last_position(&mut self) -> Result<Option<u64>, SinkError> {
            Ok(self.rows.last().map(|r| r.position))
        }

        fn rows(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRow>, SinkError> {
            Ok(self
                .rows
                .iter()
                .filter(|r| r.position >= from)
                .take(limit)
                .cloned()
                .collect())
        }
    }

    #[test]
    fn retry_after_a_lost_acknowledgment_writes_nothing_twice() {
        let (mut writer, resume) =
            FencedWriter::take_over(MemorySink::default(), 1).expect("claim");
        assert_eq!(resume, None);
        writer.write(&batch(0..3)).expect("first batch");
        writer.sink_mut().lose_next_ack = true;
        assert!(matches!(
            writer.write(&batch(3..6)),
            Err(SinkError::Backend(_))
        ));
        // The caller retries the same batch (and more): what committed is skipped.
        let outcome = writer.write(&batch(3..8)).expect("retry");
        assert_eq!(
            outcome,
            WriteOutcome {
                written: 2,
                skipped: 3,
                last_committed: Some(7)
            }
        );
        let positions: Vec<u64> = writer.into_sink().rows.iter().map(|r| r.position).collect();
        assert_eq!(positions, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_refused_write_leaves_the_writer_where_it_was() {
        let (mut writer, _) = FencedWriter::take_over(MemorySink::default(), 2).expect("claim");
        writer.write(&batch(0..3)).expect("first batch");
        assert_eq!(
            writer.write(&batch(4..6)),
            Err(SinkError::OutOfOrder {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(writer.last_committed(), Some(2));
        writer.sink_mut().epoch = 3; // a newer primary claimed
        assert_eq!(
            writer.write(&batch(3..6)),
            Err(SinkError::Fenced {
                epoch: 2,
                current: 3
            })
        );
        assert_eq!(writer.last_committed(), Some(2));
        assert_eq!(writer.epoch(), 2);
    }

    #[test]
    fn table_names_must_be_plain_identifiers() {
        for ok in ["stats", "_x", "a1_b2", &"a".repeat(MAX_TABLE_NAME_LEN)] {
            assert_eq!(validate_table(ok), Ok(ok));
        }
        for bad in [
            "",
            "1a",
            "Stats",
            "a-b",
            "a b",
            "a;drop",
            "\"x\"",
            "é",
            "sqlite_x",
            &"a".repeat(MAX_TABLE_NAME_LEN + 1),
        ] {
            assert!(
                matches!(validate_table(bad), Err(SinkError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_batch_with_a_gap_is_out_of_order() {
        let mut records = batch(3..6);
        records[2].position = 7;
        assert_eq!(
            check_batch(&records),
            Err(SinkError::OutOfOrder {
                expected: 5,
                got: 7
            })
        );
        assert_eq!(check_batch(&batch(3..6)), Ok(()));
        assert_eq!(check_batch(&[]), Ok(()));
    }

    #[test]
    fn positions_above_i64_max_are_invalid() {
        let records = batch(i64::MAX as u64..i64::MAX as u64 + 2);
        assert!(matches!(check_batch(&records), Err(SinkError::Invalid(_))));
        assert!(matches!(
            to_db(u64::MAX, "epoch"),
            Err(SinkError::Invalid(_))
        ));
    }

    #[test]
    fn write_check_puts_the_fence_before_the_position() {
        assert_eq!(
            check_write(1, 2, Some(9), &batch(0..1)),
            Err(SinkError::Fenced {
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(
            check_write(2, 2, Some(9), &batch(11..12)),
            Err(SinkError::OutOfOrder {
                expected: 10,
                got: 11
            })
        );
        assert_eq!(
            check_write(2, 2, None, &batch(1..2)),
            Err(SinkError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(check_write(3, 2, Some(9), &batch(10..12)), Ok(()));
        assert_eq!(check_write(3, 2, Some(9), &[]), Ok(()));
    }

    #[test]
    fn rows_beyond_the_fence_are_reported() {
        assert_eq!(check_rows_within_fence(Some(5), Some(5)), Ok(()));
        assert_eq!(check_rows_within_fence(Some(5), Some(2)), Ok(()));
        assert_eq!(check_rows_within_fence(Some(5), None), Ok(()));
        assert_eq!(check_rows_within_fence(None, None), Ok(()));
        assert!(matches!(
            check_rows_within_fence(Some(5), Some(6)),
            Err(SinkError::Duplicate(_))
        ));
        assert!(matches!(
            check_rows_within_fence(None, Some(0)),
            Err(SinkError::Duplicate(_))
        ));
    }
}
