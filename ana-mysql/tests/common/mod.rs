//! Shared test support: finding MySQL / MariaDB, a fresh database per test, the conformance
//! harness.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::conformance::Harness;
use ana_core::{ManualClock, TrackedOperation};
use ana_mysql::MySqlRepository;
use ana_mysql::sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use ana_mysql::sqlx::{self, AssertSqlSafe, Connection, MySqlConnection};
use tokio::sync::OnceCell;

/// The server the tests use when `MYSQL_URL` is unset (the Makefile's default).
pub const LOCAL_URL: &str = "mysql://root@127.0.0.1:3306/test";

static URL: OnceCell<String> = OnceCell::const_new();

/// Where the tests find the server: `MYSQL_URL` (read at run time), else the local server if
/// it answers, else a MariaDB container started with testcontainers if Docker runs; else the
/// test fails saying what to set.
pub async fn server_url() -> String {
    URL.get_or_init(resolve_url).await.clone()
}

async fn resolve_url() -> String {
    if let Ok(url) = std::env::var("MYSQL_URL")
        && !url.is_empty()
    {
        return url;
    }
    let local =
        tokio::time::timeout(Duration::from_secs(3), MySqlConnection::connect(LOCAL_URL)).await;
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
            "no MySQL or MariaDB for the ana-mysql tests: MYSQL_URL is unset, the local server \
             {LOCAL_URL} is unreachable ({local_error}), and no container could be started \
             ({container_error}). Set MYSQL_URL=mysql://user@host:port/db, start the local \
             server (`make services`), or start Docker."
        ),
    }
}

/// A MariaDB container shared by every test process (testcontainers' reuse: it stays up
/// after the tests; remove it with `docker rm -f` when done).
async fn start_container() -> Result<String, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};

    let container = GenericImage::new("mariadb", "10.11")
        .with_exposed_port(3306.tcp())
        .with_wait_for(WaitFor::message_on_stderr("ready for connections"))
        .with_env_var("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "1")
        .with_env_var("MARIADB_DATABASE", "test")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    let port = container
        .get_host_port_ipv4(3306.tcp())
        .await
        .map_err(|error| error.to_string())?;
    drop(container);
    Ok(format!("mysql://root@127.0.0.1:{port}/test"))
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A database name no other test (in this or another process) uses.
pub fn unique_database() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "ana_test_{}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

/// A pool on `database` of the server at `url`.
pub async fn pool(url: &str, database: &str, max_connections: u32) -> MySqlPool {
    let options = MySqlConnectOptions::from_str(url)
        .unwrap_or_else(|error| panic!("bad MySQL URL {url}: {error}"))
        .database(database);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// A fresh, migrated database (dropped when this value is dropped, even on a failed test),
/// with a repository over a pool of `max_connections` and a `ledger` table.
pub struct TestDb {
    pub url: String,
    pub database: String,
    pub pool: MySqlPool,
    pub repository: MySqlRepository,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_pool_size(8).await
    }

    pub async fn with_pool_size(max_connections: u32) -> Self {
        let url = server_url().await;
        let database = unique_database();
        let mut admin = MySqlConnection::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let pool = pool(&url, &database, max_connections).await;
        let repository = MySqlRepository::new(pool.clone());
        repository.migrate().await.unwrap();
        let db = Self {
            url,
            database,
            pool,
            repository,
        };
        db.exec(
            "CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, `key` VARCHAR(255) NOT NULL, note VARCHAR(255) NOT NULL)",
        )
        .await;
        db
    }

    /// The URL of this test's database.
    pub fn database_url(&self) -> String {
        let base = self
            .url
            .rsplit_once('/')
            .map_or(self.url.as_str(), |(base, _)| base);
        format!("{base}/{}", self.database)
    }

    pub async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .rows_affected()
    }

    /// The server's clock.
    pub async fn now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The notes in the user table, in insertion order.
    pub async fn ledger(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT note FROM ledger ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Makes `by` pass for the stored deadlines: every stored time goes back by `by`.
    pub async fn shift_back(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap();
        sqlx::query(
            "UPDATE ana_tracked_operations SET
                reference_time = reference_time - INTERVAL ? MICROSECOND,
                started_at = started_at - INTERVAL ? MICROSECOND,
                timeout = timeout - INTERVAL ? MICROSECOND,
                expiration = expiration - INTERVAL ? MICROSECOND,
                finished_at = finished_at - INTERVAL ? MICROSECOND",
        )
        .bind(micros)
        .bind(micros)
        .bind(micros)
        .bind(micros)
        .bind(micros)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Stores `record` exactly as given, replacing any record with its identity.
    pub async fn seed(&self, record: &TrackedOperation) {
        sqlx::query(
            "REPLACE INTO ana_tracked_operations
                (target, `key`, status, fingerprint, reference_time, started_at, timeout,
                 expiration, result, error, finished_at, error_count, attempt, failure)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        .bind(record.error_count)
        .bind(record.attempt)
        .bind(record.failure.map(|kind| kind.as_str()))
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Async drop does not exist: drop the database from a helper thread with its own
        // runtime. Best effort.
        let url = self.url.clone();
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(mut conn) = MySqlConnection::connect(&url).await else {
                    return;
                };
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET SESSION lock_wait_timeout = 5; DROP DATABASE IF EXISTS `{database}`"
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// The conformance harness: a fresh database, the suite's clock started at the server's time.
pub struct MySqlHarness {
    pub db: TestDb,
    clock: ManualClock,
}

impl MySqlHarness {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let clock = ManualClock::new(db.now().await);
        Self { db, clock }
    }
}

impl Harness for MySqlHarness {
    type Repository = MySqlRepository;

    fn repository(&self) -> MySqlRepository {
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
