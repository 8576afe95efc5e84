//! Shared test support: finding Postgres, a fresh schema per test, the conformance harness.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::conformance::Harness;
use ana_core::{ManualClock, TrackedOperation};
use ana_pg::PgRepository;
use std::str::FromStr;

use ana_pg::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use ana_pg::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use tokio::sync::OnceCell;

/// The server the tests use when `DATABASE_URL` is unset (the Makefile's default).
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static URL: OnceCell<String> = OnceCell::const_new();

/// Where the tests find Postgres: `DATABASE_URL` (read at run time), else the local server if
/// it answers, else a container started with testcontainers if Docker runs; else the test
/// fails saying what to set.
pub async fn database_url() -> String {
    URL.get_or_init(resolve_url).await.clone()
}

async fn resolve_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let local =
        tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(LOCAL_URL)).await;
    let local_error = match local {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return LOCAL_URL.to_owned();
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 3s".to_owned(),
    };
    match start_container().await {
        Ok(url) => url,
        Err(container_error) => panic!(
            "no PostgreSQL for the ana-pg tests: DATABASE_URL is unset, the local server \
             {LOCAL_URL} is unreachable ({local_error}), and no container could be started \
             ({container_error}). Set DATABASE_URL=postgres://user@host:port/db, start the \
             local server (`make services`), or start Docker."
        ),
    }
}

/// A Postgres container shared by every test process (testcontainers' reuse: it stays up
/// after the tests; remove it with `docker rm -f` when done).
async fn start_container() -> Result<String, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};

    let container = GenericImage::new("postgres", "16-alpine")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_DB", "test")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    let port = container
        .get_host_port_ipv4(5432.tcp())
        .await
        .map_err(|error| error.to_string())?;
    // A reused container is not removed on drop.
    drop(container);
    Ok(format!("postgres://postgres@127.0.0.1:{port}/test"))
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

/// A schema name no other test (in this or another process) uses.
pub fn unique_schema() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "ana_test_{}_{}_{}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

/// A pool whose connections carry `application_name` = `name` (to find them in
/// `pg_stat_activity`).
pub async fn pool(url: &str, name: &str, max_connections: u32) -> PgPool {
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|error| panic!("bad database URL {url}: {error}"))
        .application_name(name);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// A fresh, migrated schema (dropped when this value is dropped, even on a failed test),
/// with a repository over a pool of `max_connections`.
pub struct TestDb {
    pub url: String,
    pub schema: String,
    pub pool: PgPool,
    pub repository: PgRepository,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_pool_size(8).await
    }

    pub async fn with_pool_size(max_connections: u32) -> Self {
        let url = database_url().await;
        let schema = unique_schema();
        let pool = pool(&url, &schema, max_connections).await;
        let repository = PgRepository::with_schema(pool.clone(), &schema).unwrap();
        repository.migrate().await.unwrap();
        let db = Self {
            url,
            schema,
            pool,
            repository,
        };
        db.exec(
            "CREATE TABLE {s}.ledger (id bigserial PRIMARY KEY, key text NOT NULL, note text NOT NULL)",
        )
        .await;
        db
    }

    /// `sql` with `{s}` standing for the quoted schema.
    pub fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &format!("\"{}\"", self.schema))
    }

    pub async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(AssertSqlSafe(self.sql(sql)))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .rows_affected()
    }

    /// The database clock.
    pub async fn now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The notes in the user table, in insertion order.
    pub async fn ledger(&self) -> Vec<String> {
        sqlx::query_scalar(AssertSqlSafe(
            self.sql("SELECT note FROM {s}.ledger ORDER BY id"),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Makes `by` pass for the stored deadlines: every stored time goes back by `by`.
    pub async fn shift_back(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap();
        sqlx::query(AssertSqlSafe(self.sql(
            "UPDATE {s}.tracked_operations SET
                reference_time = reference_time - $1 * interval '1 microsecond',
                started_at = started_at - $1 * interval '1 microsecond',
                timeout = timeout - $1 * interval '1 microsecond',
                expiration = expiration - $1 * interval '1 microsecond',
                finished_at = finished_at - $1 * interval '1 microsecond'",
        )))
        .bind(micros)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Stores `record` exactly as given, replacing any record with its identity.
    pub async fn seed(&self, record: &TrackedOperation) {
        sqlx::query(AssertSqlSafe(self.sql(
            "INSERT INTO {s}.tracked_operations
                (target, key, status, fingerprint, reference_time, started_at, timeout,
                 expiration, result, error, finished_at, error_count, attempt, failure)
             VALUES ($1, $2, $3::text::{s}.operation_status, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (target, key) DO UPDATE SET
                status = excluded.status, fingerprint = excluded.fingerprint,
                reference_time = excluded.reference_time, started_at = excluded.started_at,
                timeout = excluded.timeout, expiration = excluded.expiration,
                result = excluded.result, error = excluded.error,
                finished_at = excluded.finished_at, error_count = excluded.error_count,
                attempt = excluded.attempt, failure = excluded.failure",
        )))
        .bind(&record.target)
        .bind(&record.key)
        .bind(record.status.as_str())
        .bind(&record.fingerprint.as_bytes()[..])
        .bind(record.reference_time)
        .bind(record.started_at)
        .bind(record.timeout)
        .bind(record.expiration)
        .bind(record.result.as_deref())
        .bind(record.error.as_deref())
        .bind(record.finished_at)
        .bind(i32::try_from(record.error_count).unwrap())
        .bind(i64::try_from(record.attempt).unwrap())
        .bind(record.failure.map(|kind| kind.as_str()))
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Async drop does not exist: drop the schema from a helper thread with its own
        // runtime. Best effort, bounded by a lock timeout.
        let url = self.url.clone();
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&url).await else {
                    return;
                };
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// The conformance harness: a fresh schema, the suite's clock started at the database's time.
pub struct PgHarness {
    pub db: TestDb,
    clock: ManualClock,
}

impl PgHarness {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let clock = ManualClock::new(db.now().await);
        Self { db, clock }
    }
}

impl Harness for PgHarness {
    type Repository = PgRepository;

    fn repository(&self) -> PgRepository {
        self.db.repository.clone()
    }

    fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    async fn advance_store(&self, by: Duration) {
        self.db.shift_back(by).await;
    }

    async fn seed(&self, record: TrackedOperation) {
        self.db.seed(&record).await;
    }
}
