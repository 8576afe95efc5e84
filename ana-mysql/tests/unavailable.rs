//! A database out of reach is a typed error, and the operation does not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, RepositoryError, operation};
use ana_mysql::sqlx::mysql::MySqlPoolOptions;
use ana_mysql::{MySqlRepository, MySqlSession};

fn counting(
    runs: &Arc<AtomicUsize>,
) -> impl ana_core::Operation<MySqlSession, Payload = &'static str, Output = String, Error = BoxError>
{
    let runs = Arc::clone(runs);
    operation(
        "[POST]/payments",
        "k",
        "pay 10",
        move |_: MySqlSession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>("paid".to_owned())
        },
    )
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_nothing_runs() {
    // Nothing listens on port 1.
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .unwrap();
    let repository = MySqlRepository::new(pool);
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(repository.clone());
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
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(db.repository.clone());
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
async fn a_missing_table_is_a_backend_error_not_a_missing_record() {
    let db = common::TestDb::new().await;
    db.exec("DROP TABLE ana_tracked_operations").await;
    let out = db.repository.get("[POST]/payments", "k").await;
    assert!(matches!(out, Err(RepositoryError::Backend(_))), "{out:?}");
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(db.repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs)).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Backend(_)))),
        "{out:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// The server going away mid-call (every connection killed): the finish is answered
/// `Unavailable`, never a panic, and the work is not committed; the key runs once later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_call_are_unavailable_and_roll_back() {
    let db = common::TestDb::new().await;
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(db.repository.clone());
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let call = tokio::spawn({
        let manager = manager.clone();
        async move {
            let op = operation(
                "[POST]/payments",
                "k",
                "pay 10",
                move |session: MySqlSession| async move {
                    let id: u64 = {
                        let mut tx = session.transaction().await?;
                        ana_mysql::sqlx::query(
                            "INSERT INTO ledger (`key`, note) VALUES ('k', 'lost')",
                        )
                        .execute(&mut *tx)
                        .await?;
                        ana_mysql::sqlx::query_scalar("SELECT CONNECTION_ID()")
                            .fetch_one(&mut *tx)
                            .await?
                    };
                    let _ = written_tx.send(id);
                    let _ = release_rx.await;
                    Ok::<_, BoxError>("paid".to_owned())
                },
            )
            .timeout(Duration::from_secs(60));
            manager.run(op).await
        }
    });
    let connection = written_rx.await.unwrap();
    db.exec(&format!("KILL {connection}")).await;
    release_tx.send(()).unwrap();
    let out = call.await.unwrap();
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Unavailable(_)))),
        "{out:?}"
    );
    assert!(
        db.ledger().await.is_empty(),
        "the killed transaction rolled back"
    );
    // The record was marked Failed (commit failed) on another connection: the retry runs.
    let record = db
        .repository
        .get("[POST]/payments", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, ana_core::Status::Failed);
    let runs = Arc::new(AtomicUsize::new(0));
    let out = manager.run(counting(&runs)).await;
    assert!(matches!(out, Ok(ana_core::Outcome::Executed(_))), "{out:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
