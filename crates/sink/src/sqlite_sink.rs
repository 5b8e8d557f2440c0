//! The SQLite sink: one database file in WAL mode, shared by every writer on
//! the host (each opens its own connection).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::{
    Record, Sink, SinkError, StoredRow, check_batch, check_claim, check_rows_within_fence,
    check_write, from_db, to_db, validate_table,
};

/// How a connection waits for the write lock held by another: SQLite's lock
/// has no queue, and its default busy handler sleeps up to 100 ms between
/// tries, so a writer committing back to back (the old primary) can starve a
/// new primary's claim for seconds. Polling often finds the short gaps
/// between the other's transactions.
const BUSY_FAST_POLLS: i32 = 1_000;
/// Interval of the first polls (about 0.1–0.2 s in all).
const BUSY_FAST_POLL: Duration = Duration::from_micros(100);
/// Interval of the polls after those.
const BUSY_SLOW_POLL: Duration = Duration::from_millis(1);
/// Polls in all before giving up with [`SinkError::Backend`] (about 5 s).
const BUSY_MAX_POLLS: i32 = BUSY_FAST_POLLS + 5_000;

/// The busy handler: `attempts` is how many times it was called before for
/// this lock; returning false gives up (`SQLITE_BUSY`).
fn wait_for_lock(attempts: i32) -> bool {
    if attempts >= BUSY_MAX_POLLS {
        return false;
    }
    std::thread::sleep(if attempts < BUSY_FAST_POLLS {
        BUSY_FAST_POLL
    } else {
        BUSY_SLOW_POLL
    });
    true
}

/// SQL text of one table, built once from the validated table name.
#[derive(Debug)]
struct Sql {
    select_fence: String,
    update_fence: String,
    raise_epoch: String,
    insert_row: String,
    max_row: String,
    select_rows: String,
}

impl Sql {
    fn new(table: &str) -> Sql {
        Sql {
            select_fence: format!(r#"SELECT epoch, position FROM "{table}_fence" WHERE id = 1"#),
            update_fence: format!(
                r#"UPDATE "{table}_fence" SET epoch = ?1, position = ?2 WHERE id = 1"#
            ),
            raise_epoch: format!(r#"UPDATE "{table}_fence" SET epoch = ?1 WHERE id = 1"#),
            insert_row: format!(
                r#"INSERT INTO "{table}" (position, epoch, payload) VALUES (?1, ?2, ?3)"#
            ),
            max_row: format!(r#"SELECT MAX(position) FROM "{table}""#),
            select_rows: format!(
                r#"SELECT position, epoch, payload FROM "{table}" WHERE position >= ?1 ORDER BY position LIMIT ?2"#
            ),
        }
    }
}

/// A [`Sink`] in an SQLite database file (WAL mode, `synchronous=FULL`: a
/// committed batch survives a crash of the process or the host).
///
/// # The transaction
///
/// `write` runs `BEGIN IMMEDIATE`; read the fence row; check epoch and
/// position; insert the rows; update the fence row (epoch, last position);
/// `COMMIT`. `BEGIN IMMEDIATE` takes the database's single write lock
/// *before* the fence row is read, and in WAL mode a write transaction
/// always reads the newest committed state: so two writers (connections or
/// processes) run one after the other, and each checks the fence as the
/// previous one left it. A writer that cannot get the lock within about 5 s
/// gets [`SinkError::Backend`] and wrote nothing. `claim` runs the same way.
#[derive(Debug)]
pub struct SqliteSink {
    conn: Connection,
    sql: Sql,
}

impl SqliteSink {
    /// Opens (creating if needed) the database at `path`, with the data table
    /// `table` and its fence table `{table}_fence`.
    pub fn open(path: &Path, table: &str) -> Result<Self, SinkError> {
        let (conn, sql) = open_connection(path, table)?;
        Ok(SqliteSink { conn, sql })
    }
}

impl Sink for SqliteSink {
    fn claim(&mut self, epoch: u64) -> Result<Option<u64>, SinkError> {
        let db_epoch = to_db(epoch, "epoch")?;
        let sql = &self.sql;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let (current, position) = read_fence(&tx, sql)?;
        check_claim(epoch, current)?;
        let max_row: Option<i64> = tx
            .prepare_cached(&sql.max_row)
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(backend)?;
        check_rows_within_fence(
            position,
            max_row.map(|p| from_db(p, "position")).transpose()?,
        )?;
        if epoch > current {
            tx.prepare_cached(&sql.raise_epoch)
                .and_then(|mut stmt| stmt.execute(params![db_epoch]))
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(position)
    }

    fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
        check_batch(records)?;
        let db_epoch = to_db(epoch, "epoch")?;
        let sql = &self.sql;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let (current, last) = read_fence(&tx, sql)?;
        // On any error below, dropping `tx` rolls back: nothing is written.
        check_write(epoch, current, last, records)?;
        let Some(last_record) = records.last() else {
            return Ok(()); // an empty batch: checked against the fence, nothing to commit
        };
        let db_last = to_db(last_record.position, "position")?;
        insert_rows(&tx, &sql.insert_row, db_epoch, records)?;
        tx.prepare_cached(&sql.update_fence)
            .and_then(|mut stmt| stmt.execute(params![db_epoch, db_last]))
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn last_position(&mut self) -> Result<Option<u64>, SinkError> {
        Ok(read_fence(&self.conn, &self.sql)?.1)
    }

    fn rows(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRow>, SinkError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.select_rows)
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![to_db(from, "position")?, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (position, epoch, payload) = row.map_err(backend)?;
            out.push(StoredRow {
                position: from_db(position, "position")?,
                epoch: from_db(epoch, "epoch")?,
                payload,
            });
        }
        Ok(out)
    }
}

/// The same table written without fencing: one transaction of plain INSERTs
/// per batch, no fence row read or updated. For the benchmark's
/// fenced/unfenced ratio only: it offers none of the guarantees.
#[derive(Debug)]
pub struct UnfencedSqliteSink {
    conn: Connection,
    sql: Sql,
}

impl UnfencedSqliteSink {
    /// Opens (creating if needed) the database at `path` and the table `table`.
    pub fn open(path: &Path, table: &str) -> Result<Self, SinkError> {
        let (conn, sql) = open_connection(path, table)?;
        Ok(UnfencedSqliteSink { conn, sql })
    }

    /// Inserts `records` tagged with `epoch`, in one transaction.
    pub fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
        let db_epoch = to_db(epoch, "epoch")?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        insert_rows(&tx, &self.sql.insert_row, db_epoch, records)?;
        tx.commit().map_err(backend)
    }
}

/// Opens a connection in WAL mode and creates the tables if they are missing.
fn open_connection(path: &Path, table: &str) -> Result<(Connection, Sql), SinkError> {
    let table = validate_table(table)?;
    let mut conn = Connection::open(path).map_err(backend)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(backend)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| backend_at("setting WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SinkError::Backend(format!(
            "{} cannot use WAL mode (journal mode {mode})",
            path.display()
        )));
    }
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(|e| backend_at("setting synchronous", e))?;
    // Tables that exist need no write lock (a new primary opens its sink
    // while the old one may still be writing).
    let existing: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN (?1, ?2)",
            params![table, format!("{table}_fence")],
            |row| row.get(0),
        )
        .map_err(|e| backend_at("reading the schema", e))?;
    if existing == 2 {
        return Ok((conn, Sql::new(table)));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| backend_at("creating the tables", e))?;
    tx.execute_batch(&format!(
        r#"CREATE TABLE IF NOT EXISTS "{table}" (
               position INTEGER PRIMARY KEY,
               epoch INTEGER NOT NULL,
               payload BLOB NOT NULL
           ) STRICT;
           CREATE TABLE IF NOT EXISTS "{table}_fence" (
               id INTEGER PRIMARY KEY CHECK (id = 1),
               epoch INTEGER NOT NULL,
               position INTEGER
           ) STRICT;
           INSERT OR IGNORE INTO "{table}_fence" (id, epoch, position) VALUES (1, 0, NULL);"#
    ))
    .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok((conn, Sql::new(table)))
}

/// Reads the fence row: (highest epoch, last committed position).
fn read_fence(conn: &Connection, sql: &Sql) -> Result<(u64, Option<u64>), SinkError> {
    let (epoch, position): (i64, Option<i64>) = conn
        .prepare_cached(&sql.select_fence)
        .and_then(|mut stmt| stmt.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .optional()
        .map_err(backend)?
        .ok_or_else(|| SinkError::Backend("the fence row is missing".into()))?;
    Ok((
        from_db(epoch, "epoch")?,
        position.map(|p| from_db(p, "position")).transpose()?,
    ))
}

/// Inserts the rows of a batch with the prepared INSERT.
fn insert_rows(
    conn: &Connection,
    insert_sql: &str,
    db_epoch: i64,
    records: &[Record],
) -> Result<(), SinkError> {
    let mut stmt = conn.prepare_cached(insert_sql).map_err(backend)?;
    for record in records {
        let position = to_db(record.position, "position")?;
        stmt.execute(params![position, db_epoch, record.payload])
            .map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::ConstraintViolation) => {
                    SinkError::Duplicate(format!("position {}: {e}", record.position))
                }
                _ => backend(e),
            })?;
    }
    Ok(())
}

fn backend_at(step: &str, e: rusqlite::Error) -> SinkError {
    SinkError::Backend(format!("sqlite: {step}: {e}"))
}

fn backend(e: rusqlite::Error) -> SinkError {
    SinkError::Backend(format!("sqlite: {e}"))
}
