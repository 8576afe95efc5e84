//! A database out of reach, or its write lock held past the busy timeout, is a typed error,
//! and the operation does not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, RepositoryError, operation};
use ana_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use ana_sqlite::sqlx::{self, Connection, SqliteConnection};
use ana_sqlite::{SqliteRepository, SqliteSession};

fn counting(
    runs: &Arc<AtomicUsize>,
    key: &'static str,
) -> impl ana_core::Operation<SqliteSession, Payload = &'static str, Output = String, Error = BoxError>
{
    let runs = Arc::clone(runs);
    operation(
        "[POST]/payments",
        key,
        "pay 10",
        move |_: SqliteSession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>("paid".to_owned())
        },
    )
}

#[tokio::test]
async fn an_unopenable_database_is_unavailable_and_nothing_runs() {
    // A file in a directory that does not exist cannot be opened (SQLITE_CANTOPEN).
    let options = SqliteConnectOptions::from_str("sqlite:///nonexistent-ana-dir/x/ana.db")
        .unwrap()
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options);
    let repository = SqliteRepository::new(pool);
    let manager: Manager<&'static str, String, SqliteSession> = Manager::new(repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs, "k")).await;
    match &out {
        Err(Error::Repository(error @ RepositoryError::Unavailable(_))) => {
            assert!(error.is_transient());
            // The driver's error is kept as the source.
            assert!(error.source().is_some());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // The other entry points say the same, never "no record".
    assert!(matches!(
        repository.get("[POST]/payments", "k").await,
        Err(RepositoryError::Unavailable(_))
    ));
    assert!(matches!(
        repository.migrate().await,
        Err(RepositoryError::Unavailable(_))
    ));
    assert!(matches!(
        repository.fail_timed_out(10).await,
        Err(RepositoryError::Unavailable(_))
    ));
    assert!(matches!(
        repository.delete_expired(10).await,
        Err(RepositoryError::Unavailable(_))
    ));
    assert!(matches!(
        SqliteRepository::connect("sqlite:///nonexistent-ana-dir/x/ana.db").await,
        Err(RepositoryError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_closed_pool_is_unavailable_and_nothing_runs() {
    let db = common::TestDb::new().await;
    let manager: Manager<&'static str, String, SqliteSession> = Manager::new(db.repository.clone());
    db.pool.close().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs, "k")).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Unavailable(_)))),
        "{out:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Another writer holding SQLite's lock for longer than the busy timeout: a new key's claim
/// gives up with `Unavailable` (503), runs nothing, and the key runs once the lock is free.
#[tokio::test]
async fn a_write_lock_held_past_the_busy_timeout_is_unavailable_and_nothing_runs() {
    let db = common::TestDb::new().await;
    let options = SqliteConnectOptions::from_str(&db.url)
        .unwrap()
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(100));
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let manager: Manager<&'static str, String, SqliteSession> =
        Manager::new(SqliteRepository::new(pool));

    let mut writer = SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs, "k")).await;
    match &out {
        Err(Error::Repository(RepositoryError::Unavailable(source))) => {
            assert!(source.to_string().contains("locked"), "{source}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(
        db.repository
            .get("[POST]/payments", "k")
            .await
            .unwrap()
            .is_none(),
        "nothing was recorded"
    );

    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    let out = manager.run(counting(&runs, "k")).await;
    assert!(matches!(out, Ok(ana_core::Outcome::Executed(_))), "{out:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unmigrated_database_is_a_backend_error_not_a_missing_record() {
    let path = common::unique_path();
    let repository = SqliteRepository::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let out = repository.get("[POST]/payments", "k").await;
    assert!(matches!(out, Err(RepositoryError::Backend(_))), "{out:?}");
    let manager: Manager<&'static str, String, SqliteSession> = Manager::new(repository);
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs, "k")).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Backend(_)))),
        "{out:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_file(path);
}
