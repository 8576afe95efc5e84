//! The schema name, the SQL built from it, and the embedded migrations.

use std::fmt;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Postgres, SqlSafeStr, SqlStr};

use crate::error::map_sqlx;
use crate::session;
use ana_core::RepositoryError;

/// The schema name used when none is given: `ana`.
pub const DEFAULT_SCHEMA: &str = "ana";

/// A schema name that is not a plain lower-case Postgres identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid schema name {0:?}: expected 1 to 63 characters of [a-z0-9_], not starting with a digit"
)]
pub struct InvalidSchemaName(pub String);

/// A validated schema name (`[a-z_][a-z0-9_]{0,62}`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SchemaName(Arc<str>);

impl SchemaName {
    pub(crate) fn parse(name: &str) -> Result<Self, InvalidSchemaName> {
        let mut chars = name.chars();
        let valid = name.len() <= 63
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(name.into()))
        } else {
            Err(InvalidSchemaName(name.to_owned()))
        }
    }

    /// [`DEFAULT_SCHEMA`], which is valid (a unit test checks it).
    pub(crate) fn default_name() -> Self {
        Self(DEFAULT_SCHEMA.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted identifier. Validation leaves nothing to escape; quoting keeps
    /// reserved words (`user`, `select`) usable.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Debug for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One embedded migration; `{schema}` in its SQL stands for the quoted schema name.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tracked_operations",
        sql: include_str!("../migrations/0001_tracked_operations.sql"),
    },
    Migration {
        version: 2,
        description: "claims",
        sql: include_str!("../migrations/0002_claims.sql"),
    },
    Migration {
        version: 3,
        description: "failure kinds",
        sql: include_str!("../migrations/0003_failure_kinds.sql"),
    },
    Migration {
        version: 4,
        description: "outbox",
        sql: include_str!("../migrations/0004_outbox.sql"),
    },
    Migration {
        version: 5,
        description: "watched",
        sql: include_str!("../migrations/0005_watched.sql"),
    },
];

/// The columns of a record, in the order [`crate::repository`] decodes them.
const COLUMNS: &str = "t.target, t.key, t.status::text AS status, t.fingerprint, \
     t.reference_time, t.started_at, t.timeout, t.expiration, t.result, t.error, t.failure, \
     t.finished_at, t.error_count, t.attempt, t.claim";

/// The names of [`COLUMNS`], to select them again from a CTE.
const COLUMN_NAMES: &str = "target, key, status, fingerprint, reference_time, started_at, \
     timeout, expiration, result, error, failure, finished_at, error_count, attempt, claim";

/// Every statement of a repository, built once for its schema.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) claim: Sql,
    pub(crate) complete: Sql,
    pub(crate) expire: Sql,
    pub(crate) fail: Sql,
    pub(crate) renew: Sql,
    pub(crate) get: Sql,
    pub(crate) fail_timed_out: Sql,
    pub(crate) delete_expired: Sql,
    pub(crate) forget: Sql,
    pub(crate) stats: Sql,
    pub(crate) mark_watched: Sql,
}

/// A prepared SQL text, cheap to hand to `sqlx::query` again and again.
#[derive(Clone, Debug)]
pub(crate) struct Sql(Arc<str>);

impl Sql {
    pub(crate) fn new(text: String) -> Self {
        Self(text.into())
    }

    pub(crate) fn get(&self) -> SqlStr {
        AssertSqlSafe(Arc::clone(&self.0)).into_sql_str()
    }
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let table = format!("{}.tracked_operations", schema.quoted());
        let schema_quoted = schema.quoted();
        // The claim condition is `TrackedOperation::is_claimable_at`, on the database clock
        // (`statement_timestamp()`, one value for the whole statement).
        let claimable = "t.fingerprint = $3::bytea
                 AND (t.expiration IS NULL OR t.expiration >= statement_timestamp())
                 AND (t.status IN ('ready', 'failed')
                      OR (t.status = 'running' AND t.timeout IS NOT NULL
                          AND t.timeout <= statement_timestamp()))";
        // `existing` reads the record first: a record that may not run again (Finished, held,
        // expired, another payload) is answered from that read alone, so a replay or a
        // duplicate writes nothing, locks nothing and needs no WAL flush. Otherwise the
        // insert creates the record or, on conflict, takes it over under the same condition
        // re-checked on the latest row version. A takeover keeps `watched`: the calls waiting
        // on the earlier attempt still wait for the record to finish; only a record created
        // fresh starts unwatched (the column's default).
        let claim = format!(
            "WITH existing AS (
                SELECT {COLUMNS}, ({claimable}) AS claimable
                FROM {table} t
                WHERE t.target = $1 AND t.key = $2
            ),
            claimed AS (
                INSERT INTO {table} AS t
                    (target, key, status, fingerprint, reference_time, started_at, timeout,
                     expiration, error_count, attempt, claim)
                SELECT $1::text, $2::text, 'running'::{schema_quoted}.operation_status,
                       $3::bytea, $4::timestamptz, statement_timestamp(),
                       statement_timestamp() + $5::bigint * interval '1 microsecond',
                       $6::timestamptz, 0, 1, txid_current()
                WHERE NOT EXISTS (SELECT 1 FROM existing WHERE NOT existing.claimable)
                ON CONFLICT (target, key) DO UPDATE SET
                    status = 'running',
                    attempt = t.attempt + 1,
                    claim = excluded.claim,
                    started_at = statement_timestamp(),
                    timeout = statement_timestamp() + $5::bigint * interval '1 microsecond',
                    finished_at = NULL,
                    result = NULL
                WHERE {claimable}
                RETURNING {COLUMNS}
            )
            SELECT true AS acquired, statement_timestamp() AS now,
                   (SELECT e.status::text FROM existing e) AS previous, c.*
            FROM claimed c
            UNION ALL
            SELECT false AS acquired, statement_timestamp() AS now, NULL::text AS previous,
                   {COLUMN_NAMES}
            FROM existing
            WHERE NOT EXISTS (SELECT 1 FROM claimed)"
        );
        // A finish notifies the calls waiting on the record, in every process, once committed,
        // and only when a call marked it `watched` (see `mark_watched`): a transaction that
        // notified commits under Postgres' global notify-queue lock. The notify is a column,
        // not a filter, so a finish still yields one row (the row count of the outer SELECT is
        // the update's); `pg_notify` runs only where the CASE takes its branch.
        let channel = crate::notify::channel(schema);
        let digest = crate::notify::DIGEST_SQL;
        let notifying = |update: String| {
            format!(
                "WITH finished AS ({update} RETURNING watched)
                 SELECT CASE WHEN watched THEN pg_notify('{channel}', {digest}) END
                 FROM finished"
            )
        };
        // A waiting call marks the Running record after it started listening. The row lock
        // orders the mark and the finish: either the mark commits first, and the finish reads
        // `watched = true` and notifies; or the finish commits first, and the mark re-checks
        // `status = 'running'` on the latest row version and updates nothing, which tells the
        // waiting call to read the record again at once. No finish goes unheard.
        let mark_watched = format!(
            "UPDATE {table} SET watched = true
             WHERE target = $1 AND key = $2 AND status = 'running'
             RETURNING 1"
        );
        let complete = notifying(format!(
            "UPDATE {table}
             SET status = 'finished', result = $4, error = NULL, failure = NULL,
                 finished_at = clock_timestamp()
             WHERE target = $1 AND key = $2 AND attempt = $3 AND claim = $5
               AND status = 'running'
               AND (expiration IS NULL OR expiration >= clock_timestamp())"
        ));
        let expire = format!(
            "WITH expired AS (
                UPDATE {table}
                SET status = 'failed', error = $4, failure = $6, error_count = error_count + 1
                WHERE target = $1 AND key = $2 AND attempt = $3 AND claim = $5
                  AND status = 'running' AND expiration < clock_timestamp()
                RETURNING 1
            )
            SELECT EXISTS (SELECT 1 FROM expired) AS expired,
                   EXISTS (SELECT 1 FROM {table} WHERE target = $1 AND key = $2) AS present,
                   EXISTS (SELECT 1 FROM {table} WHERE target = $1 AND key = $2
                           AND claim = $5 AND status = 'finished') AS finished"
        );
        let fail = notifying(format!(
            "UPDATE {table}
             SET status = 'failed', error = $4, failure = $6, error_count = error_count + 1
             WHERE target = $1 AND key = $2 AND attempt = $3 AND claim = $5
               AND status = 'running'"
        ));
        let renew = format!(
            "UPDATE {table}
             SET timeout = clock_timestamp() + $5::bigint * interval '1 microsecond'
             WHERE target = $1 AND key = $2 AND attempt = $3 AND claim = $4
               AND status = 'running'
             RETURNING timeout"
        );
        let get = format!("SELECT {COLUMNS} FROM {table} t WHERE t.target = $1 AND t.key = $2");
        // The rows are picked once, in a materialized CTE: as an `IN (… LIMIT …)` subquery the
        // planner may put them on the inner side of a nested loop and pick again for every
        // outer row, and records of equal deadlines may then come back in another order,
        // changing more than `limit` rows.
        let fail_timed_out = format!(
            "WITH picked AS MATERIALIZED (
                SELECT target, key FROM {table}
                WHERE status = 'running' AND timeout IS NOT NULL
                  AND timeout <= clock_timestamp()
                ORDER BY timeout
                LIMIT $1
                FOR UPDATE SKIP LOCKED)
             UPDATE {table} t
             SET status = 'failed', error = $2, failure = $3, error_count = t.error_count + 1
             FROM picked
             WHERE t.target = picked.target AND t.key = picked.key
               AND t.status = 'running' AND t.timeout <= clock_timestamp()
             RETURNING t.target, t.key, t.watched"
        );
        // A timed-out record a call waits on wakes it, as a finish does (one row per record).
        let row_digest = digest.replace("$1", "target").replace("$2", "key");
        let fail_timed_out = format!(
            "WITH failed AS ({fail_timed_out})
             SELECT CASE WHEN watched THEN pg_notify('{channel}', {row_digest}) END
             FROM failed"
        );
        let delete_expired = format!(
            "WITH picked AS MATERIALIZED (
                SELECT target, key FROM {table}
                WHERE expiration IS NOT NULL
                  AND expiration < clock_timestamp() - $2::bigint * interval '1 microsecond'
                  /* A holder that may still be at work keeps its record. */
                  AND NOT (status = 'running'
                           AND (timeout IS NULL OR timeout > clock_timestamp()))
                ORDER BY expiration
                LIMIT $1
                FOR UPDATE SKIP LOCKED)
             DELETE FROM {table} t
             USING picked
             WHERE t.target = picked.target AND t.key = picked.key"
        );
        // The delete re-checks its condition on the latest row version (a claim committed
        // after this statement's snapshot is never deleted unforced); the outer SELECT reads
        // the snapshot, to tell an absent record from a held one. A deleted record a call
        // waits on wakes it, as a finish does: the call claims again at once.
        let forget = format!(
            "WITH deleted AS (
                DELETE FROM {table}
                WHERE target = $1 AND key = $2
                  AND ($3 OR NOT (status = 'running'
                                  AND (timeout IS NULL OR timeout > clock_timestamp())))
                RETURNING watched
            )
            SELECT d.watched IS NOT NULL AS deleted, e.status::text AS status,
                   e.timeout, clock_timestamp() AS now,
                   CASE WHEN d.watched THEN pg_notify('{channel}', {digest}) END AS woken
            FROM (SELECT 1) AS one
            LEFT JOIN deleted d ON true
            LEFT JOIN {table} e ON e.target = $1 AND e.key = $2"
        );
        let stats = format!(
            "SELECT status::text AS status, count(*) AS records,
                    count(*) FILTER (WHERE status = 'running'
                                     AND timeout <= statement_timestamp()) AS timed_out,
                    count(*) FILTER (WHERE expiration < statement_timestamp()) AS expired
             FROM {table}
             GROUP BY status"
        );
        Self {
            forget: Sql::new(forget),
            stats: Sql::new(stats),
            claim: Sql::new(claim),
            complete: Sql::new(complete),
            expire: Sql::new(expire),
            fail: Sql::new(fail),
            renew: Sql::new(renew),
            get: Sql::new(get),
            fail_timed_out: Sql::new(fail_timed_out),
            delete_expired: Sql::new(delete_expired),
            mark_watched: Sql::new(mark_watched),
        }
    }
}

/// Applies the embedded migrations that `schema` lacks, in one transaction under an advisory
/// lock of the schema, so concurrent and repeated runs are safe. Its `BEGIN` and `COMMIT` run
/// to their end even if the caller stops waiting (see [`session::begin`]).
pub(crate) async fn migrate(
    conn: PoolConnection<Postgres>,
    schema: &SchemaName,
) -> Result<(), RepositoryError> {
    let mut tx = session::begin(conn).await?;
    // Serializes migrators of this schema (other schemas are not held up). Released at
    // COMMIT or ROLLBACK.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('ana-pg migrate ' || $1, 0))")
        .bind(schema.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    // CREATE SCHEMA IF NOT EXISTS still needs the CREATE privilege on the database: skip it
    // when the schema exists, so an application role without that privilege can migrate a
    // schema made for it.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
    let quoted = schema.quoted();
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {quoted}")))
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
            version bigint PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await
    .map_err(map_sqlx)?;
    let applied: Vec<i64> = sqlx::query_scalar::<Postgres, i64>(AssertSqlSafe(format!(
        "SELECT version FROM {quoted}.schema_migrations"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(map_sqlx)?;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(migration.sql.replace("{schema}", &quoted)))
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {quoted}.schema_migrations (version, description) VALUES ($1, $2)"
        )))
        .bind(migration.version)
        .bind(migration.description)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    }
    session::commit(tx).await
}

/// The claim and complete statements of a repository on `schema`, with their `$n` parameters,
/// so that a benchmark replays exactly the SQL the repository runs. Not a stable API.
#[doc(hidden)]
pub fn claim_and_complete_sql(schema: &str) -> Result<(String, String), InvalidSchemaName> {
    let statements = Statements::new(&SchemaName::parse(schema)?);
    Ok((
        statements.claim.0.to_string(),
        statements.complete.0.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert_eq!(
            SchemaName::parse(DEFAULT_SCHEMA),
            Ok(SchemaName::default_name())
        );
        for good in ["ana", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(SchemaName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1a",
            "Ana",
            "a-b",
            "a\"b",
            "a b",
            "ünï",
            &"a".repeat(64),
        ] {
            assert_eq!(
                SchemaName::parse(bad),
                Err(InvalidSchemaName(bad.to_owned()))
            );
        }
    }

    #[test]
    fn statements_name_the_quoted_schema() {
        let schema = SchemaName::parse("user").unwrap();
        let statements = Statements::new(&schema);
        assert!(
            statements
                .claim
                .get()
                .as_str()
                .contains("\"user\".tracked_operations")
        );
        assert!(!statements.get.get().as_str().contains("{schema}"));
    }
}
