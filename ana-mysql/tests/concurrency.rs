//! 64 concurrent calls on one key over a pool of 8 connections to MySQL / MariaDB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, Outcome, Status, operation};
use ana_mysql::MySqlSession;
use ana_mysql::sqlx;
use common::TestDb;
use tokio::sync::{Barrier, mpsc, watch};

const CALLS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_calls_on_eight_connections_execute_once_and_never_wait() {
    let db = TestDb::with_pool_size(8).await;
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(db.repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CALLS));
    let (release_tx, release_rx) = watch::channel(false);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    for _ in 0..CALLS {
        let (manager, runs, barrier) = (manager.clone(), Arc::clone(&runs), Arc::clone(&barrier));
        let (mut release, results) = (release_rx.clone(), results_tx.clone());
        let started = started_tx.clone();
        tokio::spawn(async move {
            let op = operation(
                "[POST]/payments",
                "k",
                "pay 10",
                move |session: MySqlSession| async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut tx = session.transaction().await?;
                        sqlx::query("INSERT INTO ledger (`key`, note) VALUES ('k', ?)")
                            .bind(format!("run {run}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                    // The holder keeps its transaction (and its connection) open until released;
                    // a second execution would not wait and would show as a second result.
                    if run == 0 {
                        let _ = started.send(());
                        let _ = release.wait_for(|released| *released).await;
                    }
                    Ok::<_, BoxError>("once".to_owned())
                },
            );
            barrier.wait().await;
            let _ = results.send(manager.run(op).await);
        });
    }
    drop(results_tx);
    // The 63 others answer while the holder is still open: none waits on its lock. The
    // time limit only turns a hang into a failure.
    for answered in 0..CALLS - 1 {
        let result = tokio::time::timeout(Duration::from_secs(30), results_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {answered} calls answered while the holder ran"));
        assert!(
            matches!(result, Some(Err(Error::StillRunning { .. }))),
            "expected StillRunning while the holder runs, got {result:?}"
        );
    }
    // The duplicates may all answer before the holder has even opened its transaction.
    tokio::time::timeout(Duration::from_secs(30), started_rx.recv())
        .await
        .expect("the holder starts");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        db.ledger().await.is_empty(),
        "the holder has not committed yet"
    );
    release_tx.send(true).unwrap();
    let last = results_rx.recv().await;
    assert!(
        matches!(&last, Some(Ok(Outcome::Executed(r))) if r == "once"),
        "{last:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(db.ledger().await, ["run 0"]);
    let record = db
        .repository
        .get("[POST]/payments", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));

    // Afterwards, 64 more concurrent calls all replay.
    let mut replays = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let manager = manager.clone();
        let runs = Arc::clone(&runs);
        replays.spawn(async move {
            let op = operation(
                "[POST]/payments",
                "k",
                "pay 10",
                move |_: MySqlSession| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BoxError>("again".to_owned())
                },
            );
            manager.run(op).await
        });
    }
    while let Some(result) = replays.join_next().await {
        let result = result.unwrap();
        assert!(
            matches!(&result, Ok(Outcome::Replayed(r)) if r == "once"),
            "{result:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(db.ledger().await, ["run 0"]);
}
