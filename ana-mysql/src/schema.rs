//! The SQL of the store and its embedded migrations.

use std::sync::LazyLock;

use ana_core::RepositoryError;
use sqlx::{MySql, MySqlConnection};

use crate::error::map_sqlx;

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

/// The server's clock, UTC, to the microsecond; one value for the whole statement, whatever
/// the session's `time_zone`.
const NOW: &str = "UTC_TIMESTAMP(6)";

/// The columns of a record, in the order [`crate::repository`] decodes them.
const COLUMNS: &str = "t.target, t.`key`, t.status, t.fingerprint, t.reference_time, \
     t.started_at, t.timeout, t.expiration, t.result, t.error, t.failure, t.finished_at, \
     t.error_count, t.attempt, t.claim";

/// Every statement of the store, with `?` placeholders (their order is noted at each).
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) read: String,
    pub(crate) claim: String,
    pub(crate) complete: String,
    pub(crate) expire: String,
    pub(crate) classify: String,
    pub(crate) fail: String,
    pub(crate) renew: String,
    pub(crate) renewed: String,
    pub(crate) get: String,
    pub(crate) fail_timed_out: String,
    pub(crate) delete_expired: String,
    pub(crate) forget: String,
    pub(crate) held: String,
    pub(crate) stats: String,
}

pub(crate) static SQL: LazyLock<Statements> = LazyLock::new(Statements::new);

/// `TrackedOperation::is_claimable_at` on the server's clock, on columns prefixed `prefix`;
/// one `?`: the fingerprint.
fn claimable(prefix: &str) -> String {
    format!(
        "({prefix}fingerprint = ?
          AND ({prefix}expiration IS NULL OR {prefix}expiration >= {NOW})
          AND ({prefix}status IN ('ready', 'failed')
               OR ({prefix}status = 'running' AND {prefix}timeout IS NOT NULL
                   AND {prefix}timeout <= {NOW})))"
    )
}

impl Statements {
    fn new() -> Self {
        // Binds: fingerprint, target, key. Always one row (the probe), with the server's
        // time and a fresh claim number, and the record's columns when it exists.
        let read = format!(
            "SELECT {COLUMNS}, {NOW} AS now, UUID_SHORT() AS next_claim,
                    CAST({claimable} AS SIGNED) AS claimable
             FROM (SELECT 1 AS one) AS probe
             LEFT JOIN ana_tracked_operations t ON t.target = ? AND t.`key` = ?",
            claimable = claimable("t.")
        );
        // One statement: creates the record, or takes it over when the condition holds on the
        // row under its lock. The first assignment decides (MySQL assigns left to right, so
        // the condition reads the old row): `claim` becomes this claim's number, and every
        // later assignment changes its column only where `claim` is that number.
        // `LAST_INSERT_ID(x)` reports the outcome in the statement's answer: 1 created,
        // n >= 2 taken over as attempt n, 0 left as it was.
        // Binds: target, key, fingerprint, reference time, timeout µs, expiration, claim |
        // fingerprint, claim ×5, timeout µs, claim ×2.
        let claim = format!(
            "INSERT INTO ana_tracked_operations
                (target, `key`, status, fingerprint, reference_time, started_at, timeout,
                 expiration, error_count, attempt, claim)
             VALUES (?, ?, 'running', ?, ?, {NOW}, {NOW} + INTERVAL ? MICROSECOND, ?, 0,
                     LAST_INSERT_ID(1), ?)
             ON DUPLICATE KEY UPDATE
                claim = IF({claimable}, ?, claim),
                attempt = IF(claim <=> ?, LAST_INSERT_ID(attempt + 1),
                             attempt + LAST_INSERT_ID(0)),
                status = IF(claim <=> ?, 'running', status),
                started_at = IF(claim <=> ?, {NOW}, started_at),
                timeout = IF(claim <=> ?, {NOW} + INTERVAL ? MICROSECOND, timeout),
                finished_at = IF(claim <=> ?, NULL, finished_at),
                result = IF(claim <=> ?, NULL, result)",
            claimable = claimable("")
        );
        // Binds: result, target, key, attempt, claim.
        let complete = format!(
            "UPDATE ana_tracked_operations
             SET status = 'finished', result = ?, error = NULL, failure = NULL,
                 finished_at = {NOW}
             WHERE target = ? AND `key` = ? AND attempt = ? AND claim = ?
               AND status = 'running'
               AND (expiration IS NULL OR expiration >= {NOW})"
        );
        // Binds: message, kind, target, key, attempt, claim.
        let expire = format!(
            "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?, failure = ?, error_count = error_count + 1
             WHERE target = ? AND `key` = ? AND attempt = ? AND claim = ?
               AND status = 'running' AND expiration < {NOW}"
        );
        // Binds: target, key, target, key, claim.
        let classify = "SELECT
                CAST(EXISTS (SELECT 1 FROM ana_tracked_operations
                             WHERE target = ? AND `key` = ?) AS SIGNED) AS present,
                CAST(EXISTS (SELECT 1 FROM ana_tracked_operations
                             WHERE target = ? AND `key` = ? AND claim = ?
                               AND status = 'finished') AS SIGNED) AS finished"
            .to_owned();
        // Binds: message, kind, target, key, attempt, claim.
        let fail = "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?, failure = ?, error_count = error_count + 1
             WHERE target = ? AND `key` = ? AND attempt = ? AND claim = ?
               AND status = 'running'"
            .to_owned();
        // Binds: lease in microseconds, target, key, attempt, claim.
        let renew = format!(
            "UPDATE ana_tracked_operations SET timeout = {NOW} + INTERVAL ? MICROSECOND
             WHERE target = ? AND `key` = ? AND attempt = ? AND claim = ?
               AND status = 'running'"
        );
        // Binds: target, key, claim.
        let renewed = "SELECT timeout FROM ana_tracked_operations
             WHERE target = ? AND `key` = ? AND claim = ? AND status = 'running'"
            .to_owned();
        // Binds: target, key.
        let get = format!(
            "SELECT {COLUMNS} FROM ana_tracked_operations t WHERE t.target = ? AND t.`key` = ?"
        );
        // Binds: message, kind, limit.
        let fail_timed_out = format!(
            "UPDATE ana_tracked_operations
             SET status = 'failed', error = ?, failure = ?, error_count = error_count + 1
             WHERE status = 'running' AND timeout IS NOT NULL AND timeout <= {NOW}
             ORDER BY timeout
             LIMIT ?"
        );
        // Binds: retention µs, limit.
        let delete_expired = format!(
            "DELETE FROM ana_tracked_operations
             WHERE expiration IS NOT NULL AND expiration < {NOW} - INTERVAL ? MICROSECOND
               /* A holder that may still be at work keeps its record. */
               AND NOT (status = 'running' AND (timeout IS NULL OR timeout > {NOW}))
             ORDER BY expiration
             LIMIT ?"
        );
        // Binds: target, key, force. InnoDB decides on the latest row version, under its lock:
        // a Running record whose holder may still be at work stays unless forced.
        let forget = format!(
            "DELETE FROM ana_tracked_operations
             WHERE target = ? AND `key` = ?
               AND (? OR NOT (status = 'running' AND (timeout IS NULL OR timeout > {NOW})))"
        );
        // Binds: target, key.
        let held = "SELECT status, timeout FROM ana_tracked_operations
             WHERE target = ? AND `key` = ?"
            .to_owned();
        let stats = format!(
            "SELECT CAST(status AS CHAR) AS status, COUNT(*) AS records,
                    CAST(COALESCE(SUM(status = 'running' AND timeout IS NOT NULL
                                      AND timeout <= {NOW}), 0) AS SIGNED) AS timed_out,
                    CAST(COALESCE(SUM(expiration IS NOT NULL AND expiration < {NOW}), 0)
                         AS SIGNED) AS expired
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
            renewed,
            get,
            fail_timed_out,
            delete_expired,
        }
    }
}

/// Applies the embedded migrations the database lacks, under a named lock of the database
/// (`GET_LOCK`), so concurrent and repeated runs are safe. MySQL commits DDL at once, so each
/// migration is written to be run again whole (`IF NOT EXISTS`).
pub(crate) async fn migrate(conn: &mut MySqlConnection) -> Result<(), RepositoryError> {
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('ana-mysql migrate ', DATABASE()), 60)")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    if locked != Some(1) {
        return Err(RepositoryError::Unavailable(
            "another process held the migration lock for 60 s".into(),
        ));
    }
    let applied = apply(conn).await;
    let released = sqlx::query("DO RELEASE_LOCK(CONCAT('ana-mysql migrate ', DATABASE()))")
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx);
    applied.and(released.map(drop))
}

async fn apply(conn: &mut MySqlConnection) -> Result<(), RepositoryError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ana_schema_migrations (
            version BIGINT PRIMARY KEY,
            description VARCHAR(255) NOT NULL,
            applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ) ENGINE = InnoDB",
    )
    .execute(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let applied: Vec<i64> =
        sqlx::query_scalar::<MySql, i64>("SELECT version FROM ana_schema_migrations")
            .fetch_all(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        sqlx::raw_sql(migration.sql)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        sqlx::query("INSERT INTO ana_schema_migrations (version, description) VALUES (?, ?)")
            .bind(migration.version)
            .bind(migration.description)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    }
    Ok(())
}

/// The read, claim and complete statements of a new key, with their `?` parameters, so that a
/// benchmark replays exactly the SQL the repository runs. Not a stable API.
#[doc(hidden)]
pub fn protocol_sql() -> (&'static str, &'static str, &'static str) {
    (SQL.read.as_str(), SQL.claim.as_str(), SQL.complete.as_str())
}
