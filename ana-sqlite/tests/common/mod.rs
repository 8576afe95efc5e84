//! Shared test support: a fresh database file per test, the conformance harness.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::conformance::Harness;
use ana_core::{ManualClock, TrackedOperation};
use ana_sqlite::SqliteRepository;
use ana_sqlite::sqlx::{self, SqlitePool};

static FILES: AtomicU32 = AtomicU32::new(0);

/// A database file no other test (in this or another process) uses.
pub fn unique_path() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "ana-sqlite-test-{}-{}-{}.db",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed),
        nanos
    ))
}

/// A fresh, migrated database (its files removed when this value is dropped), with a
/// repository and a `ledger` table for the operations' own writes.
pub struct TestDb {
    /// The file, or `None` for `sqlite::memory:`.
    pub path: Option<PathBuf>,
    pub url: String,
    pub pool: SqlitePool,
    pub repository: SqliteRepository,
}

impl TestDb {
    /// A database file opened as `SqliteRepository::connect` opens it.
    pub async fn new() -> Self {
        let path = unique_path();
        let url = format!("sqlite://{}", path.display());
        Self::open(Some(path), url).await
    }

    /// `sqlite::memory:`.
    pub async fn memory() -> Self {
        Self::open(None, "sqlite::memory:".to_owned()).await
    }

    async fn open(path: Option<PathBuf>, url: String) -> Self {
        let repository = SqliteRepository::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
        repository.migrate().await.unwrap();
        let db = Self {
            path,
            url,
            pool: repository.pool().clone(),
            repository,
        };
        db.exec(
            "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, note TEXT NOT NULL)",
        )
        .await;
        db
    }

    pub async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .rows_affected()
    }

    /// SQLite's clock.
    pub async fn now(&self) -> DateTime<Utc> {
        self.repository.now().await.unwrap()
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
                reference_time = reference_time - ?1,
                started_at = started_at - ?1,
                timeout = timeout - ?1,
                expiration = expiration - ?1,
                finished_at = finished_at - ?1",
        )
        .bind(micros)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Stores `record` exactly as given, replacing any record with its identity.
    pub async fn seed(&self, record: &TrackedOperation) {
        let micros = |at: Option<DateTime<Utc>>| at.map(|at| at.timestamp_micros());
        sqlx::query(
            "INSERT OR REPLACE INTO ana_tracked_operations
                (target, key, status, fingerprint, reference_time, started_at, timeout,
                 expiration, result, error, finished_at, error_count, attempt, failure)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .bind(&record.target)
        .bind(&record.key)
        .bind(record.status.as_str())
        .bind(&record.fingerprint.as_bytes()[..])
        .bind(record.reference_time.timestamp_micros())
        .bind(micros(record.started_at))
        .bind(micros(record.timeout))
        .bind(micros(record.expiration))
        .bind(record.result.as_deref())
        .bind(record.error.as_deref())
        .bind(micros(record.finished_at))
        .bind(i64::from(record.error_count))
        .bind(i64::try_from(record.attempt).unwrap())
        .bind(record.failure.map(|kind| kind.as_str()))
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// The conformance harness: a fresh database, the suite's clock started at SQLite's time.
pub struct SqliteHarness {
    pub db: TestDb,
    clock: ManualClock,
}

impl SqliteHarness {
    pub async fn new() -> Self {
        Self::on(TestDb::new().await).await
    }

    pub async fn memory() -> Self {
        Self::on(TestDb::memory().await).await
    }

    async fn on(db: TestDb) -> Self {
        let clock = ManualClock::new(db.now().await);
        Self { db, clock }
    }
}

impl Harness for SqliteHarness {
    type Repository = SqliteRepository;

    fn repository(&self) -> SqliteRepository {
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
