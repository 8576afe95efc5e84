//! 64 concurrent calls on one key over a pool of 8 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, Outcome, Status, operation};
use ana_pg::PgSession;
use ana_pg::sqlx::{self, AssertSqlSafe};
use common::TestDb;
use tokio::sync::{Barrier, mpsc, watch};

const CALLS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_calls_on_eight_connections_execute_once_and_never_wait() {
    let db = TestDb::with_pool_size(8).await;
    let manager: Manager<&'static str, String, PgSession> = Manager::new(db.repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CALLS));
    let (release_tx, release_rx) = watch::channel(false);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    for _ in 0..CALLS {
        let (manager, runs, barrier) = (manager.clone(), Arc::clone(&runs), Arc::clone(&barrier));
        let (mut release, results, schema) =
            (release_rx.clone(), results_tx.clone(), db.schema.clone());
        let started = started_tx.clone();
        tokio::spawn(async move {
            let op = operation(
                "[POST]/payments",
                "k",
                "pay 10",
                move |session: PgSession| async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut tx = session.transaction().await?;
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO \"{schema}\".ledger (key, note) VALUES ('k', $1)"
                        )))
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
                move |_: PgSession| async move {
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

/// The row version of the record: `xmin` changes when it is written, `xmax` when it is
/// written or row-locked.
async fn row_version(db: &TestDb, key: &str) -> (String, String) {
    sqlx::query_as(AssertSqlSafe(db.sql(
        "SELECT xmin::text, xmax::text FROM {s}.tracked_operations WHERE key = $1",
    )))
    .bind(key)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn replays_and_duplicates_neither_write_nor_lock_the_record() {
    let db = TestDb::new().await;
    let manager: Manager<&'static str, String, PgSession> = Manager::new(db.repository.clone());
    let call = |payload: &'static str| {
        operation("[POST]/payments", "k", payload, |_: PgSession| async {
            Ok::<_, BoxError>("done".to_owned())
        })
        .timeout(Duration::from_secs(60))
    };
    assert!(matches!(
        manager.run(call("pay 10")).await,
        Ok(Outcome::Executed(_))
    ));
    let finished = row_version(&db, "k").await;
    for _ in 0..3 {
        assert!(matches!(
            manager.run(call("pay 10")).await,
            Ok(Outcome::Replayed(_))
        ));
        assert!(matches!(
            manager.run(call("pay 20")).await,
            Err(Error::PayloadMismatch { .. })
        ));
    }
    assert_eq!(
        row_version(&db, "k").await,
        finished,
        "a replay touched the row"
    );

    // A duplicate of a Running record answers StillRunning without writing either.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move {
            let op = operation(
                "[POST]/payments",
                "held",
                "x",
                move |_: PgSession| async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, BoxError>("held".to_owned())
                },
            )
            .timeout(Duration::from_secs(60));
            manager.run(op).await
        }
    });
    started_rx.await.unwrap();
    let running = row_version(&db, "held").await;
    let duplicate = operation("[POST]/payments", "held", "x", |_: PgSession| async {
        Ok::<_, BoxError>("twice".to_owned())
    });
    assert!(matches!(
        manager.run(duplicate).await,
        Err(Error::StillRunning { .. })
    ));
    assert_eq!(
        row_version(&db, "held").await,
        running,
        "a duplicate touched the row"
    );
    release_tx.send(()).unwrap();
    assert!(matches!(holder.await.unwrap(), Ok(Outcome::Executed(_))));
}

/// A claim that reads a record it may take (Failed) while a concurrent claim is taking it
/// over answers the record as it stands once that claim has committed (Running, held), not
/// its stale read: the manager would take a claimable record answered as not taken for a
/// corrupt store, and the client would get a 500 where a 409 is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_racing_a_takeover_answers_the_record_as_it_stands() {
    use ana_core::{Claim, ClaimRequest, Payload, TrackedOperation};
    use ana_pg::sqlx::Connection;

    let db = TestDb::new().await;
    let now = db.now().await;
    let mut failed =
        TrackedOperation::new("[POST]/race", "k", Status::Failed, "p".fingerprint(), now);
    failed.attempt = 1;
    failed.error = Some("declined".into());
    db.seed(&failed).await;

    // Another claim's takeover, in flight: the row is locked until it commits.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query(AssertSqlSafe(db.sql(
        "UPDATE {s}.tracked_operations
         SET status = 'running', attempt = attempt + 1, claim = txid_current(),
             started_at = now(), timeout = now() + interval '1 hour'
         WHERE key = 'k'",
    )))
    .execute(&mut other)
    .await
    .unwrap();

    let claim = tokio::spawn({
        let repository = db.repository.clone();
        async move {
            repository
                .claim(&ClaimRequest {
                    target: "[POST]/race",
                    key: "k",
                    fingerprint: "p".fingerprint(),
                    reference_time: now,
                    timeout: Some(Duration::from_secs(60)),
                    expiration: None,
                })
                .await
        }
    });
    // Its snapshot saw the Failed record; it waits on the row lock to take it over.
    let mut polls = 0;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(other_pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        polls += 1;
        assert!(polls < 100_000, "the claim never waited on the row lock");
        tokio::task::yield_now().await;
    }
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    match claim.await.unwrap() {
        Ok(Claim::Existing { record, .. }) => {
            assert_eq!((record.status, record.attempt), (Status::Running, 2));
        }
        other => panic!("expected the record held by the other claim, got {other:?}"),
    }
}

/// Calls of every kind at once on a pool of two connections, so that claims wait for the
/// connections other calls hold and get them handed over: new keys finishing without a
/// transaction (handed over), in one (back to the pool), failing (back to the pool), and
/// replays (handed over). Every call answers, each key runs once, and the pool ends with
/// its two connections idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_on_a_full_pool_hand_connections_over_and_all_answer() {
    const KEYS: usize = 48;
    let db = TestDb::with_pool_size(2).await;
    let manager: Manager<&'static str, String, PgSession> = Manager::new(db.repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(2 * KEYS));
    let mut calls = tokio::task::JoinSet::new();
    // Each key twice: a new key and its duplicate or replay, all released at once.
    for n in 0..2 * KEYS {
        let (manager, runs, barrier) = (manager.clone(), Arc::clone(&runs), Arc::clone(&barrier));
        let schema = db.schema.clone();
        calls.spawn(async move {
            let key = format!("k{}", n % KEYS);
            let kind = n % KEYS % 3;
            let op = operation(
                "[POST]/payments",
                key.clone(),
                "pay 10",
                move |session: PgSession| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    match kind {
                        0 => Ok(format!("done {key}")),
                        1 => {
                            let mut tx = session.transaction().await?;
                            sqlx::query(AssertSqlSafe(format!(
                                "INSERT INTO \"{schema}\".ledger (key, note) VALUES ($1, 'x')"
                            )))
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                            Ok(format!("written {key}"))
                        }
                        _ => Err::<String, BoxError>("declined".into()),
                    }
                },
            );
            barrier.wait().await;
            (n % KEYS, manager.run(op).await)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(60), calls.join_next())
        .await
        .expect("every call answers")
    {
        let (key, result) = joined.unwrap();
        answered += 1;
        match key % 3 {
            0 | 1 => assert!(
                matches!(
                    &result,
                    Ok(Outcome::Executed(_) | Outcome::Replayed(_))
                        | Err(Error::StillRunning { .. })
                ),
                "key {key}: {result:?}"
            ),
            _ => assert!(
                matches!(
                    &result,
                    Err(Error::Operation(_) | Error::StillRunning { .. })
                ),
                "key {key}: {result:?}"
            ),
        }
    }
    assert_eq!(answered, 2 * KEYS);
    // Each key ran once, or twice when it failed and its duplicate came after.
    let ran = runs.load(Ordering::SeqCst);
    assert!((KEYS..=KEYS + KEYS / 3).contains(&ran), "{ran} runs");
    assert_eq!(db.ledger().await.len(), KEYS / 3);
    for key in (0..KEYS).filter(|key| key % 3 != 2) {
        let record = db
            .repository
            .get("[POST]/payments", &format!("k{key}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, Status::Finished, "k{key}");
    }
    // Every connection is back in the pool, none kept by a hand-over (each goes back through
    // sqlx's release task: polled until it ran).
    let idle = tokio::time::timeout(Duration::from_secs(10), async {
        while u32::try_from(db.pool.num_idle()).ok() != Some(db.pool.size()) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        idle.is_ok(),
        "pool: {} open, {} idle",
        db.pool.size(),
        db.pool.num_idle()
    );
}
