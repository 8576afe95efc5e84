//! The payments table's SQL, one set of statements per database; the code that runs them is
//! written once ([`dialect!`]) and stamped out for each driver's connection type.

use crate::model::Payment;
use crate::store::{Replace, StoreError, to_the_end};

/// The statements of one database. Positional parameters, in the order the code binds them.
struct Sql {
    /// How a transaction starts.
    begin: &'static str,
    /// The table, if missing (run under `lock` when there is one).
    create_table: &'static str,
    /// Taken before `create_table` where concurrent `CREATE … IF NOT EXISTS` can collide.
    lock: Option<&'static str>,
    /// (id, version, body); affects no row when the id is taken.
    insert: &'static str,
    /// (id) → version.
    version: &'static str,
    /// (id) → (version, body).
    get: &'static str,
    /// (version, body, id, version read).
    update: &'static str,
    /// (id, version).
    delete: &'static str,
    /// (limit, offset) → (version, body), oldest first.
    list: &'static str,
    count: &'static str,
    clear: &'static str,
}

const SQLITE: Sql = Sql {
    // Takes the write lock at once: a read-then-write transaction never fails with
    // SQLITE_BUSY_SNAPSHOT where waiting would have done.
    begin: "BEGIN IMMEDIATE",
    create_table: "CREATE TABLE IF NOT EXISTS payments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        body TEXT NOT NULL)",
    lock: None,
    insert: "INSERT INTO payments (id, version, body) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
    version: "SELECT version FROM payments WHERE id = ?",
    get: "SELECT version, body FROM payments WHERE id = ?",
    update: "UPDATE payments SET version = ?, body = ? WHERE id = ? AND version = ?",
    delete: "DELETE FROM payments WHERE id = ? AND version = ?",
    list: "SELECT version, body FROM payments ORDER BY seq LIMIT ? OFFSET ?",
    count: "SELECT COUNT(*) FROM payments",
    clear: "DELETE FROM payments",
};

const POSTGRES: Sql = Sql {
    begin: "BEGIN",
    create_table: "CREATE TABLE IF NOT EXISTS payments (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        version BIGINT NOT NULL,
        body TEXT NOT NULL)",
    lock: Some("SELECT pg_advisory_xact_lock(40404)"),
    insert: "INSERT INTO payments (id, version, body) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    version: "SELECT version FROM payments WHERE id = $1",
    get: "SELECT version, body FROM payments WHERE id = $1",
    update: "UPDATE payments SET version = $1, body = $2 WHERE id = $3 AND version = $4",
    delete: "DELETE FROM payments WHERE id = $1 AND version = $2",
    list: "SELECT version, body FROM payments ORDER BY seq LIMIT $1 OFFSET $2",
    count: "SELECT COUNT(*) FROM payments",
    clear: "DELETE FROM payments",
};

const MYSQL: Sql = Sql {
    begin: "BEGIN",
    // Binary collation: ids are compared byte for byte, as on the other databases.
    create_table: "CREATE TABLE IF NOT EXISTS payments (
        seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL UNIQUE,
        version BIGINT NOT NULL,
        body LONGTEXT CHARACTER SET utf8mb4 NOT NULL)",
    lock: None,
    // The only error IGNORE can turn into a warning here is the duplicate id: the values are
    // bound with their exact types and the id's length is validated.
    insert: "INSERT IGNORE INTO payments (id, version, body) VALUES (?, ?, ?)",
    version: "SELECT version FROM payments WHERE id = ?",
    get: "SELECT version, body FROM payments WHERE id = ?",
    update: "UPDATE payments SET version = ?, body = ? WHERE id = ? AND version = ?",
    delete: "DELETE FROM payments WHERE id = ? AND version = ?",
    list: "SELECT version, body FROM payments ORDER BY seq LIMIT ? OFFSET ?",
    count: "SELECT COUNT(*) FROM payments",
    clear: "DELETE FROM payments",
};

/// A stored row back as a payment; the `version` column is the truth.
fn decode((version, body): (i64, String)) -> Result<Payment, StoreError> {
    let mut payment: Payment = serde_json::from_str(&body)?;
    payment.version = version;
    Ok(payment)
}

/// Whether a replacement may go ahead on a payment at `current`: `If-Match` first (412),
/// then the version in the body (409).
fn check_replace(current: i64, replace: &Replace<'_>) -> Result<(), StoreError> {
    let id = || replace.payment.id.clone();
    if replace.if_match.is_some_and(|version| version != current) {
        return Err(StoreError::PreconditionFailed(id()));
    }
    if replace.read != current {
        return Err(StoreError::Stale {
            id: id(),
            sent: replace.read,
        });
    }
    Ok(())
}

/// The operations of one database, on its connection type.
macro_rules! dialect {
    ($name:ident, $db:ty, $connection:ty, $sql:expr) => {
        pub(super) mod $name {
            use super::*;

            type Connection = $connection;
            const SQL: Sql = $sql;

            pub(crate) async fn begin(
                pool: &sqlx::Pool<$db>,
            ) -> Result<sqlx::Transaction<'static, $db>, StoreError> {
                let pool = pool.clone();
                to_the_end(async move { pool.begin_with(SQL.begin).await }).await
            }

            pub(crate) async fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
                use sqlx::Connection as _;
                let mut tx = conn.begin().await?;
                if let Some(lock) = SQL.lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                sqlx::query(SQL.create_table).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn create(
                conn: &mut Connection,
                payment: &Payment,
            ) -> Result<(), StoreError> {
                let inserted = sqlx::query(SQL.insert)
                    .bind(&payment.id)
                    .bind(payment.version)
                    .bind(serde_json::to_string(payment)?)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    return Err(StoreError::Exists(payment.id.clone()));
                }
                Ok(())
            }

            pub(crate) async fn get(
                conn: &mut Connection,
                id: &str,
            ) -> Result<Option<Payment>, StoreError> {
                let row: Option<(i64, String)> = sqlx::query_as(SQL.get)
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(decode).transpose()
            }

            async fn version(conn: &mut Connection, id: &str) -> Result<i64, StoreError> {
                let version: Option<i64> = sqlx::query_scalar(SQL.version)
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                version.ok_or_else(|| StoreError::NotFound(id.to_owned()))
            }

            pub(crate) async fn replace(
                conn: &mut Connection,
                replace: &Replace<'_>,
            ) -> Result<(), StoreError> {
                let payment = replace.payment;
                check_replace(version(conn, &payment.id).await?, replace)?;
                // Conditional: a writer that committed since the read above wins.
                let updated = sqlx::query(SQL.update)
                    .bind(payment.version)
                    .bind(serde_json::to_string(payment)?)
                    .bind(&payment.id)
                    .bind(replace.read)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err(StoreError::Stale {
                        id: payment.id.clone(),
                        sent: replace.read,
                    });
                }
                Ok(())
            }

            pub(crate) async fn delete(
                conn: &mut Connection,
                id: &str,
                read: i64,
            ) -> Result<(), StoreError> {
                let deleted = sqlx::query(SQL.delete)
                    .bind(id)
                    .bind(read)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    // Missing, or at another version.
                    version(conn, id).await?;
                    return Err(StoreError::Stale {
                        id: id.to_owned(),
                        sent: read,
                    });
                }
                Ok(())
            }

            pub(crate) async fn list(
                conn: &mut Connection,
                from: i64,
                size: i64,
            ) -> Result<Vec<Payment>, StoreError> {
                let rows: Vec<(i64, String)> = sqlx::query_as(SQL.list)
                    .bind(size)
                    .bind(from)
                    .fetch_all(&mut *conn)
                    .await?;
                rows.into_iter().map(decode).collect()
            }

            pub(crate) async fn count(conn: &mut Connection) -> Result<u64, StoreError> {
                let count: i64 = sqlx::query_scalar(SQL.count).fetch_one(&mut *conn).await?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            pub(crate) async fn clear(conn: &mut Connection) -> Result<(), StoreError> {
                sqlx::query(SQL.clear).execute(&mut *conn).await?;
                Ok(())
            }

            pub(crate) async fn ping(conn: &mut Connection) -> Result<(), StoreError> {
                use sqlx::Connection as _;
                conn.ping().await?;
                Ok(())
            }
        }
    };
}

dialect!(sqlite, sqlx::Sqlite, sqlx::SqliteConnection, SQLITE);
dialect!(postgres, sqlx::Postgres, sqlx::PgConnection, POSTGRES);
dialect!(mysql, sqlx::MySql, sqlx::MySqlConnection, MYSQL);
