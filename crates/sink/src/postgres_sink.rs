//! The PostgreSQL sink: every writer (primary, backups, zombies) has its own
//! connection to the same database.

use std::error::Error as _;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use crate::{
    Record, Sink, SinkError, StoredRow, check_batch, check_claim, check_rows_within_fence,
    check_write, from_db, next_position, to_db, validate_table,
};

/// How many times a write or claim is tried when the fence changed between
/// the statement and the read that explains its refusal.
const MAX_ATTEMPTS: usize = 3;

/// Session settings: `READ COMMITTED` whatever the server's default (the
/// re-check of the fence row after a lock wait described on
/// [`PostgresSink`]; under a stricter level the waiting writer would fail
/// with a serialization error instead, safely but needlessly), and how long
/// a writer waits for the fence row's lock and for any one statement.
const SESSION_SETTINGS: &str = "SET default_transaction_isolation = 'read committed'; \
     SET lock_timeout = '5s'; SET statement_timeout = '30s'";

/// A [`Sink`] in a PostgreSQL database.
///
/// # The transaction
///
/// `write` is one statement, so one transaction (autocommit, `READ
/// COMMITTED`):
///
/// ```sql
/// WITH fence AS (
///     UPDATE "{table}_fence" SET epoch = $1, position = $last
///     WHERE id = 1 AND epoch <= $1 AND position IS NOT DISTINCT FROM $first - 1
///     RETURNING id)
/// INSERT INTO "{table}" (position, epoch, payload)
/// SELECT u.position, $1, u.payload FROM UNNEST($positions, $payloads) AS u(position, payload)
/// WHERE EXISTS (SELECT 1 FROM fence)
/// ```
///
/// The conditional `UPDATE` of the fence row comes first and takes the row's
/// lock: a concurrent writer's `UPDATE` waits for that lock until the first
/// transaction commits or aborts, and then (PostgreSQL's rule for `UPDATE`
/// under `READ COMMITTED`) evaluates its `WHERE` again on the *newest*
/// version of the row: so a writer whose epoch is now below the fence, or
/// whose first position no longer follows on, matches nothing and inserts
/// nothing. The rows are inserted only if the fence row was updated, and the
/// data rows and the fence row commit (or abort) together. When nothing was
/// inserted, a read of the fence row says why ([`SinkError::Fenced`] or
/// [`SinkError::OutOfOrder`]). `claim` is one `UPDATE ... SET epoch = $1
/// WHERE epoch <= $1 RETURNING position` on the same row lock.
pub struct PostgresSink {
    client: Client,
    statements: Statements,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink").finish_non_exhaustive()
    }
}

/// The prepared statements of one table.
struct Statements {
    claim: Statement,
    write: Statement,
    select_fence: Statement,
    select_rows: Statement,
}

impl PostgresSink {
    /// Connects with `conninfo` (a libpq-style string or URL, no TLS) and
    /// creates the data table `table` and its fence table `{table}_fence` if
    /// they are missing.
    pub fn connect(conninfo: &str, table: &str) -> Result<Self, SinkError> {
        let mut client = connect_and_create(conninfo, table)?;
        let statements = Statements {
            claim: client
                .prepare(&format!(
                    r#"UPDATE "{table}_fence" SET epoch = $1::BIGINT WHERE id = 1 AND epoch <= $1::BIGINT
                       RETURNING position, (SELECT MAX(position) FROM "{table}")"#
                ))
                .map_err(backend)?,
            write: client
                .prepare(&format!(
                    r#"WITH fence AS (
                           UPDATE "{table}_fence" SET epoch = $1::BIGINT, position = $2::BIGINT
                           WHERE id = 1 AND epoch <= $1::BIGINT AND position IS NOT DISTINCT FROM $3::BIGINT
                           RETURNING id)
                       INSERT INTO "{table}" (position, epoch, payload)
                       SELECT u.position, $1::BIGINT, u.payload
                       FROM UNNEST($4::BIGINT[], $5::BYTEA[]) AS u(position, payload)
                       WHERE EXISTS (SELECT 1 FROM fence)"#
                ))
                .map_err(backend)?,
            select_fence: client
                .prepare(&format!(r#"SELECT epoch, position FROM "{table}_fence" WHERE id = 1"#))
                .map_err(backend)?,
            select_rows: client
                .prepare(&format!(
                    r#"SELECT position, epoch, payload FROM "{table}"
                       WHERE position >= $1::BIGINT ORDER BY position LIMIT $2::BIGINT"#
                ))
                .map_err(backend)?,
        };
        Ok(PostgresSink { client, statements })
    }

    /// Reads the fence row: (highest epoch, last committed position).
    fn read_fence(&mut self) -> Result<(u64, Option<u64>), SinkError> {
        let row = self
            .client
            .query_opt(&self.statements.select_fence, &[])
            .map_err(backend)?
            .ok_or_else(|| SinkError::Backend("the fence row is missing".into()))?;
        let epoch: i64 = row.try_get(0).map_err(backend)?;
        let position: Option<i64> = row.try_get(1).map_err(backend)?;
        Ok((
            from_db(epoch, "epoch")?,
            position.map(|p| from_db(p, "position")).transpose()?,
        ))
    }
}

impl Sink for PostgresSink {
    fn claim(&mut self, epoch: u64) -> Result<Option<u64>, SinkError> {
        let db_epoch = to_db(epoch, "epoch")?;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(row) = self
                .client
                .query_opt(&self.statements.claim, &[&db_epoch])
                .map_err(backend)?
            {
                let position: Option<i64> = row.try_get(0).map_err(backend)?;
                let max_row: Option<i64> = row.try_get(1).map_err(backend)?;
                let position = position.map(|p| from_db(p, "position")).transpose()?;
                check_rows_within_fence(
                    position,
                    max_row.map(|p| from_db(p, "position")).transpose()?,
                )?;
                return Ok(position);
            }
            let (current, _) = self.read_fence()?;
            check_claim(epoch, current)?;
            // The fence moved between the two statements in a way that now
            // lets this claim through (it cannot: epochs only rise); try again.
        }
        Err(SinkError::Backend(format!(
            "the fence kept changing: claim of epoch {epoch} tried {MAX_ATTEMPTS} times"
        )))
    }

    fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
        check_batch(records)?;
        let db_epoch = to_db(epoch, "epoch")?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            let (current, last) = self.read_fence()?;
            return check_write(epoch, current, last, records); // an empty batch: only the fence check
        };
        let db_last = to_db(last.position, "position")?;
        let db_previous = first
            .position
            .checked_sub(1)
            .map(|p| to_db(p, "position"))
            .transpose()?;
        let positions = records
            .iter()
            .map(|r| to_db(r.position, "position"))
            .collect::<Result<Vec<i64>, _>>()?;
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        for _ in 0..MAX_ATTEMPTS {
            let inserted = self
                .client
                .execute(
                    &self.statements.write,
                    &[&db_epoch, &db_last, &db_previous, &positions, &payloads],
                )
                .map_err(|e| insert_error(e, first.position))?;
            if inserted == records.len() as u64 {
                return Ok(());
            }
            if inserted != 0 {
                return Err(SinkError::Backend(format!(
                    "inserted {inserted} rows of a batch of {}: the statement is broken",
                    records.len()
                )));
            }
            let (current, last) = self.read_fence()?;
            check_write(epoch, current, last, records)?;
            // The fence moved between the write and the read so that the
            // batch now follows on (a writer of the same epoch filled the
            // gap): try again.
            tracing::debug!(
                epoch,
                first = first.position,
                expected = next_position(last),
                "fence moved: retrying the write"
            );
        }
        Err(SinkError::Backend(format!(
            "the fence kept changing: batch from position {} tried {MAX_ATTEMPTS} times",
            first.position
        )))
    }

    fn last_position(&mut self) -> Result<Option<u64>, SinkError> {
        Ok(self.read_fence()?.1)
    }

    fn rows(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRow>, SinkError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &self.statements.select_rows,
                &[&to_db(from, "position")?, &limit],
            )
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get(0).map_err(backend)?;
                let epoch: i64 = row.try_get(1).map_err(backend)?;
                let payload: Vec<u8> = row.try_get(2).map_err(backend)?;
                Ok(StoredRow {
                    position: from_db(position, "position")?,
                    epoch: from_db(epoch, "epoch")?,
                    payload,
                })
            })
            .collect()
    }
}

/// The same table written without fencing: one plain multi-row INSERT per
/// batch, no fence row read or updated. For the benchmark's fenced/unfenced
/// ratio only: it offers none of the guarantees.
pub struct UnfencedPostgresSink {
    client: Client,
    insert: Statement,
}

impl std::fmt::Debug for UnfencedPostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnfencedPostgresSink")
            .finish_non_exhaustive()
    }
}

impl UnfencedPostgresSink {
    /// Connects with `conninfo` and creates the table `table` if it is missing.
    pub fn connect(conninfo: &str, table: &str) -> Result<Self, SinkError> {
        let mut client = connect_and_create(conninfo, table)?;
        let insert = client
            .prepare(&format!(
                r#"INSERT INTO "{table}" (position, epoch, payload)
                   SELECT u.position, $1::BIGINT, u.payload
                   FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS u(position, payload)"#
            ))
            .map_err(backend)?;
        Ok(UnfencedPostgresSink { client, insert })
    }

    /// Inserts `records` tagged with `epoch`, in one statement.
    pub fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
        let db_epoch = to_db(epoch, "epoch")?;
        let positions = records
            .iter()
            .map(|r| to_db(r.position, "position"))
            .collect::<Result<Vec<i64>, _>>()?;
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        let first = records.first().map_or(0, |r| r.position);
        self.client
            .execute(&self.insert, &[&db_epoch, &positions, &payloads])
            .map_err(|e| insert_error(e, first))?;
        Ok(())
    }
}

/// Connects, sets the session settings and creates the tables if missing
/// (under an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS` of the
/// same table can fail in PostgreSQL).
fn connect_and_create(conninfo: &str, table: &str) -> Result<Client, SinkError> {
    let table = validate_table(table)?;
    let mut client = Client::connect(conninfo, NoTls).map_err(backend)?;
    client.batch_execute(SESSION_SETTINGS).map_err(backend)?;
    let mut tx = client.transaction().map_err(backend)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1::TEXT)::BIGINT)",
        &[&table],
    )
    .map_err(backend)?;
    tx.batch_execute(&format!(
        r#"CREATE TABLE IF NOT EXISTS "{table}" (
               position BIGINT PRIMARY KEY,
               epoch BIGINT NOT NULL,
               payload BYTEA NOT NULL
           );
           CREATE TABLE IF NOT EXISTS "{table}_fence" (
               id INT PRIMARY KEY CHECK (id = 1),
               epoch BIGINT NOT NULL,
               position BIGINT
           );
           INSERT INTO "{table}_fence" (id, epoch, position) VALUES (1, 0, NULL) ON CONFLICT (id) DO NOTHING;"#
    ))
    .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(client)
}

/// A failed INSERT: a unique violation is a duplicate (a bug), the rest is
/// the backend's.
fn insert_error(e: postgres::Error, first: u64) -> SinkError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return SinkError::Duplicate(format!("batch from position {first}: {}", describe(&e)));
    }
    backend(e)
}

fn backend(e: postgres::Error) -> SinkError {
    SinkError::Backend(format!("postgres: {}", describe(&e)))
}

/// The error with its causes (the driver's own message is often just "db error").
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
