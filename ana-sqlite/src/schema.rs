//! The SQL of the store and its embedded migrations.

use std::sync::LazyLock;

use ana_core::{RepositoryError, to_the_end};
use sqlx::pool::PoolConnection;
use sqlx::{SqlSafeStr, Sqlite, Transaction};

use crate::error::map_sqlx;
use crate::session;

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "tracked_operations",
    sql: include_str!("../migrations/0001_tracked_operations.sql"),
}];

/// SQLite's clock in whole microseconds since the epoch. `'now'` is one value for the whole
/// statement; its resolution is a millisecond. `julianday` (not `unixepoch('subsec')`) keeps
/// SQLite 3.35, the first with `RETURNING`, enough.
const NOW: &str = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)";

/// The columns of a record, in the order [`crate::repository`] decodes them.
const COLUMNS: &str = "target, key, status, fingerprint, reference_time, started_at, timeout, \
     expiration, result, error, failure, finished_at, error_count, attempt, claim";

/// Every statement of the store. `?1` target, `?2` key throughout.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) read: String,
    pub(crate) claim: String,
    pub(crate) complete: String,
    pub(crate) expire: String,
    pub(crate) classify: String,
    pub(crate) fail: String,
    pub(crate) renew: String,
    pub(crate) get: String,
    pub(crate) now: String,
    pub(crate) fail_timed_out: String,
    pub(crate) delete_expired: String,
    pub(crate) forget: String,
    pub(crate) held: String,
    pub(crate) stats: String,
}

pub(crate) static SQL: LazyLock<Statements> = LazyLock::new(Statements::new);

impl Statements {
    fn new() -> Self {
        // `TrackedOperation::is_claimable_at` on SQLite's clock; `?3` is the fingerprint.
        let claimable = format!(
            "fingerprint = ?3
             AND (expiration IS NULL OR expiration >= {NOW})
             AND (status IN ('ready', 'failed')
                  OR (status = 'running' AND timeout IS NOT NULL AND timeout <= {NOW}))"
        );
        let read = format!(
            "SELECT {COLUMNS}, {NOW} AS now, ({claimable}) AS claimable
             FROM ana_tracked_operations WHERE target = ?1 AND key = ?2"
        );
        // One statement: creates the record, or takes it over when the condition holds on the
        // row as it stands under the write lock. `?5` is the timeout in microseconds (NULL:
        // none), `?6` the expiration. The claim number is the counter's next value.
        let claim = format!(
            "INSERT INTO ana_tracked_operations
                (target, key, status, fingerprint, reference_time, started_at, timeout,
                 expiration, error_count, attempt, claim)
             VALUES (?1, ?2, 'running', ?3, ?4, {NOW}, {NOW} + ?5, ?6, 0, 1,
                     (SELECT last + 1 FROM ana_claims WHERE id = 1))
             ON CONFLICT (target, key) DO UPDATE SET
                status = 'running',
                attempt = attempt + 1,
                claim = excluded.claim,
                started_at = excluded.started_at,
                timeout = excluded.timeout,
                finished_at = NULL,
                result = NULL
             WHERE {claimable}
             RETURNING {COLUMNS}, {NOW} AS now"
        );
        // `?3` attempt, `?4` result, `?5` claim number.
        let complete = format!(
            "UPDATE ana_tracked_operations
             SET status = 'finished', result = ?4, error = NULL, failure = NULL,
                 finished_at = {NOW}
             WHERE target = ?1 AND key = ?2 AND attempt = ?3 AND claim = ?5
               AND status = 'running'
               AND (expiration IS NULL OR expiration >= {NOW})"
        );
        // `?3` attempt, `?4` message, `?5` claim number, `?6` failure kind.
        let expire = format!(
            "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?4, failure = ?6, error_count = error_count + 1
             WHERE target = ?1 AND key = ?2 AND attempt = ?3 AND claim = ?5
               AND status = 'running' AND expiration < {NOW}"
        );
        let classify = "SELECT
                EXISTS (SELECT 1 FROM ana_tracked_operations
                        WHERE target = ?1 AND key = ?2) AS present,
                EXISTS (SELECT 1 FROM ana_tracked_operations
                        WHERE target = ?1 AND key = ?2 AND claim = ?3
                          AND status = 'finished') AS finished"
            .to_owned();
        let fail = "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?4, failure = ?6, error_count = error_count + 1
             WHERE target = ?1 AND key = ?2 AND attempt = ?3 AND claim = ?5
               AND status = 'running'"
            .to_owned();
        // `?5` the lease in microseconds.
        let renew = format!(
            "UPDATE ana_tracked_operations SET timeout = {NOW} + ?5
             WHERE target = ?1 AND key = ?2 AND attempt = ?3 AND claim = ?4
               AND status = 'running'
             RETURNING timeout"
        );
        let get =
            format!("SELECT {COLUMNS} FROM ana_tracked_operations WHERE target = ?1 AND key = ?2");
        let now = format!("SELECT {NOW}");
        // `?1` limit, `?2` message, `?3` kind. One writer at a time: nothing to skip.
        let fail_timed_out = format!(
            "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?2, failure = ?3, error_count = error_count + 1
             WHERE rowid IN (
                SELECT rowid FROM ana_tracked_operations
                WHERE status = 'running' AND timeout IS NOT NULL AND timeout <= {NOW}
                ORDER BY timeout
                LIMIT ?1)"
        );
        // `?1` limit, `?2` retention in microseconds.
        let delete_expired = format!(
            "DELETE FROM ana_tracked_operations
             WHERE rowid IN (
                SELECT rowid FROM ana_tracked_operations
                WHERE expiration IS NOT NULL AND expiration < {NOW} - ?2
                  /* A holder that may still be at work keeps its record. */
                  AND NOT (status = 'running' AND (timeout IS NULL OR timeout > {NOW}))
                ORDER BY expiration
                LIMIT ?1)"
        );
        // `?1` target, `?2` key, `?3` force: a Running record whose holder may still be at
        // work (no timeout, or its timeout ahead) stays unless forced.
        let forget = format!(
            "DELETE FROM ana_tracked_operations
             WHERE target = ?1 AND key = ?2
               AND (?3 OR NOT (status = 'running' AND (timeout IS NULL OR timeout > {NOW})))"
        );
        let held = format!(
            "SELECT status, timeout, {NOW} AS now FROM ana_tracked_operations
             WHERE target = ?1 AND key = ?2"
        );
        let stats = format!(
            "SELECT status, count(*) AS records,
                    total(status = 'running' AND timeout IS NOT NULL AND timeout <= {NOW})
                        AS timed_out,
                    total(expiration IS NOT NULL AND expiration < {NOW}) AS expired
             FROM ana_tracked_operations GROUP BY status"
        );
        Self {
            forget,
            held,
            stats,
            read,
            claim,
            complete,
            expire,
            classify,
            fail,
            renew,
            get,
            now,
            fail_timed_out,
            delete_expired,
        }
    }
}

/// Applies the embedded migrations the database lacks, inside `BEGIN IMMEDIATE`: the write
/// lock serializes concurrent migrators (other processes on the same file included), and
/// applied versions are listed in `ana_schema_migrations`, so repeated runs do nothing.
/// Its `BEGIN IMMEDIATE` and `COMMIT` run to their end even if the caller stops waiting (see
/// [`session::begin`]).
pub(crate) async fn migrate(conn: PoolConnection<Sqlite>) -> Result<(), RepositoryError> {
    let begin = Transaction::begin(conn, Some("BEGIN IMMEDIATE".into_sql_str()));
    let mut tx = to_the_end(begin).await?.map_err(map_sqlx)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ana_schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    )
    .execute(&mut *tx)
    .await
    .map_err(map_sqlx)?;
    let applied: Vec<i64> =
        sqlx::query_scalar::<Sqlite, i64>("SELECT version FROM ana_schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(map_sqlx)?;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query("INSERT INTO ana_schema_migrations (version, description) VALUES (?1, ?2)")
            .bind(migration.version)
            .bind(migration.description)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
    }
    session::commit(tx).await
}

/// The read, claim and complete statements of a new key, with their `?n` parameters, so that
/// a benchmark replays exactly the SQL the repository runs. Not a stable API.
#[doc(hidden)]
pub fn protocol_sql() -> (&'static str, &'static str, &'static str) {
    (SQL.read.as_str(), SQL.claim.as_str(), SQL.complete.as_str())
}
