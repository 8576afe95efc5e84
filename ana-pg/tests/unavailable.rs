//! A database out of reach is a typed error, and the operation does not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, RepositoryError, operation};
use ana_pg::sqlx::postgres::PgPoolOptions;
use ana_pg::{PgRepository, PgSession};

fn counting(
    runs: &Arc<AtomicUsize>,
) -> impl ana_core::Operation<PgSession, Payload = &'static str, Output = String, Error = BoxError>
{
    let runs = Arc::clone(runs);
    operation(
        "[POST]/payments",
        "k",
        "pay 10",
        move |_: PgSession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>("paid".to_owned())
        },
    )
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_nothing_runs() {
    // Nothing listens on port 1.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let repository = PgRepository::new(pool);
    let manager: Manager<&'static str, String, PgSession> = Manager::new(repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs)).await;
    match &out {
        Err(Error::Repository(error @ RepositoryError::Unavailable(source))) => {
            assert!(error.is_transient());
            // The driver's error is kept as the source.
            assert!(error.source().is_some());
            let text = source.to_string();
            assert!(
                text.contains("pool timed out") || text.contains("refused"),
                "{text}"
            );
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
}

#[tokio::test]
async fn a_closed_pool_is_unavailable_and_nothing_runs() {
    let db = common::TestDb::new().await;
    let manager: Manager<&'static str, String, PgSession> = Manager::new(db.repository.clone());
    db.pool.close().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs)).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Unavailable(_)))),
        "{out:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_missing_schema_is_a_backend_error_not_a_missing_record() {
    let db = common::TestDb::new().await;
    let repository = PgRepository::with_schema(db.pool.clone(), "ana_never_migrated").unwrap();
    let out = repository.get("[POST]/payments", "k").await;
    assert!(matches!(out, Err(RepositoryError::Backend(_))), "{out:?}");
    let manager: Manager<&'static str, String, PgSession> = Manager::new(repository);
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs)).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Backend(_)))),
        "{out:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
