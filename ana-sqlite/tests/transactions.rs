//! The operation's own writes commit with its record, or not at all; records survive a
//! restart; migrations run again harmlessly; the clean-up frees and deletes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use ana_core::{
    BoxError, Error, FailureKind, IdempotencyRepository, Manager, Outcome, Status, operation,
};
use ana_sqlite::{CleanupConfig, SqliteRepository, SqliteSession, sqlx};
use common::TestDb;
use tokio::sync::oneshot;

type TestManager = Manager<&'static str, String, SqliteSession>;

/// An operation writing `note` to the ledger in its transaction, then failing if `fail`.
fn write(
    key: &'static str,
    note: &'static str,
    fail: bool,
) -> impl ana_core::Operation<SqliteSession, Payload = &'static str, Output = String, Error = BoxError>
{
    operation(
        "[POST]/ledger",
        key,
        "p",
        move |session: SqliteSession| async move {
            {
                let mut tx = session.transaction().await?;
                sqlx::query("INSERT INTO ledger (key, note) VALUES (?1, ?2)")
                    .bind(key)
                    .bind(note)
                    .execute(&mut *tx)
                    .await?;
            }
            if fail {
                return Err::<String, BoxError>("declined".into());
            }
            Ok(note.to_owned())
        },
    )
    .timeout(Duration::from_secs(60))
}

#[tokio::test]
async fn writes_commit_with_the_record_and_roll_back_with_a_failure() {
    let db = TestDb::new().await;
    let manager: TestManager = Manager::new(db.repository.clone());
    let out = manager.run(write("a", "kept", false)).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(n)) if n == "kept"),
        "{out:?}"
    );
    let out = manager.run(write("b", "rolled back", true)).await;
    assert!(matches!(out, Err(Error::Operation(_))), "{out:?}");
    assert_eq!(db.ledger().await, ["kept"]);
    let failed = db
        .repository
        .get("[POST]/ledger", "b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (failed.status, failed.failure, failed.error_count),
        (Status::Failed, Some(FailureKind::Error), 1)
    );
    // The failed key runs again and commits this time.
    let out = manager.run(write("b", "second try", false)).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(n)) if n == "second try"),
        "{out:?}"
    );
    assert_eq!(db.ledger().await, ["kept", "second try"]);
}

/// A holder past its timeout is taken over; its late writes roll back and its finish is
/// Superseded. (While a holder's transaction is open it holds SQLite's write lock, and no
/// takeover can write: a takeover happens between a holder's claim and its transaction, or
/// after the holder died, which released the lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_holder_rolls_back_its_writes() {
    let db = TestDb::new().await;
    let manager: TestManager = Manager::new(db.repository.clone());
    let (claimed_tx, claimed_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let stale = tokio::spawn({
        let manager = manager.clone();
        async move {
            let op = operation(
                "[POST]/ledger",
                "k",
                "p",
                move |session: SqliteSession| async move {
                    let _ = claimed_tx.send(());
                    let _ = release_rx.await;
                    let mut tx = session.transaction().await?;
                    sqlx::query("INSERT INTO ledger (key, note) VALUES ('k', 'stale')")
                        .execute(&mut *tx)
                        .await?;
                    Ok::<_, BoxError>("stale".to_owned())
                },
            )
            .timeout(Duration::from_secs(60));
            manager.run(op).await
        }
    });
    claimed_rx.await.unwrap();
    db.shift_back(Duration::from_secs(61)).await;
    let out = manager.run(write("k", "taken over", false)).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(n)) if n == "taken over"),
        "{out:?}"
    );
    release_tx.send(()).unwrap();
    let out = stale.await.unwrap();
    assert!(matches!(out, Err(Error::Superseded { .. })), "{out:?}");
    assert_eq!(db.ledger().await, ["taken over"]);
    let record = db
        .repository
        .get("[POST]/ledger", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.status, record.attempt), (Status::Finished, 2));
}

#[tokio::test]
async fn records_survive_a_restart_on_the_same_file() {
    let db = TestDb::new().await;
    let manager: TestManager = Manager::new(db.repository.clone());
    let out = manager.run(write("k", "once", false)).await;
    assert!(matches!(out, Ok(Outcome::Executed(_))), "{out:?}");
    db.pool.close().await;

    let reopened = SqliteRepository::connect(&db.url).await.unwrap();
    reopened.migrate().await.unwrap();
    let manager: TestManager = Manager::new(reopened.clone());
    let out = manager.run(write("k", "twice", false)).await;
    assert!(
        matches!(&out, Ok(Outcome::Replayed(n)) if n == "once"),
        "{out:?}"
    );
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM ledger")
        .fetch_all(reopened.pool())
        .await
        .unwrap();
    assert_eq!(notes, ["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_again_and_concurrently() {
    let db = TestDb::new().await;
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url.clone();
        runs.spawn(async move {
            let repository = SqliteRepository::connect(&url).await?;
            repository.migrate().await
        });
    }
    while let Some(run) = runs.join_next().await {
        run.unwrap().unwrap();
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM ana_schema_migrations")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1]);
}

#[tokio::test]
async fn the_cleanup_fails_timed_out_and_deletes_expired_records() {
    let db = TestDb::new().await;
    let manager: TestManager = Manager::new(db.repository.clone());
    // A held record, its holder gone: the call is dropped while it runs.
    let (started_tx, started_rx) = oneshot::channel();
    let held = tokio::spawn({
        let manager = manager.clone();
        async move {
            let op = operation(
                "[POST]/ledger",
                "held",
                "p",
                move |_: SqliteSession| async move {
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    Ok::<_, BoxError>(String::new())
                },
            )
            .timeout(Duration::from_secs(60));
            manager.run(op).await
        }
    });
    started_rx.await.unwrap();
    let finished = operation("[POST]/ledger", "done", "p", |_: SqliteSession| async {
        Ok::<_, BoxError>("done".to_owned())
    })
    .expiration(Duration::from_secs(3600));
    assert!(matches!(
        manager.run(finished).await,
        Ok(Outcome::Executed(_))
    ));

    // Nothing is due yet.
    assert_eq!(db.repository.fail_timed_out(10).await.unwrap(), 0);
    assert_eq!(db.repository.delete_expired(10).await.unwrap(), 0);
    db.shift_back(Duration::from_secs(3601)).await;
    let cleanup = db
        .repository
        .spawn_cleanup(CleanupConfig::every(Duration::from_secs(3600)));
    let mut reports = cleanup.subscribe();
    let report = reports.wait_for(|r| r.rounds >= 1).await.unwrap().clone();
    assert_eq!((report.failed, report.deleted, report.errors), (1, 1, 0));
    let report = cleanup.shutdown().await;
    assert_eq!(report.rounds, 1);
    let record = db
        .repository
        .get("[POST]/ledger", "held")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.status, record.failure),
        (Status::Failed, Some(FailureKind::TimedOut))
    );
    assert!(
        db.repository
            .get("[POST]/ledger", "done")
            .await
            .unwrap()
            .is_none()
    );
    held.abort();
}
