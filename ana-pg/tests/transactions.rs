//! The operation's own writes commit with its record, or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{
    BoxError, Error, FailureKind, IdempotencyRepository, Manager, Outcome, RepositoryError, Status,
    operation,
};
use ana_pg::PgSession;
use ana_pg::sqlx::pool::PoolConnection;
use ana_pg::sqlx::{self, AssertSqlSafe, Postgres};
use common::TestDb;
use tokio::sync::oneshot;

const TARGET: &str = "[POST]/payments";
const MINUTE: Duration = Duration::from_secs(60);

type TestManager = Manager<&'static str, String, PgSession>;

fn manager(db: &TestDb) -> TestManager {
    Manager::new(db.repository.clone())
}

/// Inserts `note` into the user table inside the session's transaction.
async fn insert(
    db_schema: &str,
    session: &PgSession,
    key: &str,
    note: &str,
) -> Result<(), BoxError> {
    let mut tx = session.transaction().await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{db_schema}\".ledger (key, note) VALUES ($1, $2)"
    )))
    .bind(key)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_commits_the_operations_writes_with_the_record() {
    let db = TestDb::new().await;
    let manager = manager(&db);
    let (inserted_tx, inserted_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let schema = db.schema.clone();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "paid").await?;
            let _ = inserted_tx.send(());
            let _ = release_rx.await;
            Ok::<_, BoxError>("receipt".to_owned())
        },
    );
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    inserted_rx.await.unwrap();
    // Written but not committed: invisible outside the session.
    assert!(db.ledger().await.is_empty());
    assert_eq!(
        db.repository
            .get(TARGET, "k")
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Running
    );
    release_tx.send(()).unwrap();
    let out = call.await.unwrap();
    assert!(
        matches!(&out, Ok(Outcome::Executed(r)) if r == "receipt"),
        "{out:?}"
    );
    assert_eq!(db.ledger().await, ["paid"]);
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    assert!(record.finished_at.is_some());
}

#[tokio::test]
async fn an_error_rolls_the_writes_back() {
    let db = TestDb::new().await;
    let schema = db.schema.clone();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "paid").await?;
            Err::<String, BoxError>("card declined".into())
        },
    );
    let out = manager(&db).run(op).await;
    assert!(
        matches!(&out, Err(Error::Operation(e)) if e.to_string() == "card declined"),
        "{out:?}"
    );
    assert!(db.ledger().await.is_empty());
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!((record.status, record.error_count), (Status::Failed, 1));
    assert_eq!(record.error.as_deref(), Some("card declined"));
}

#[tokio::test]
async fn a_panic_rolls_the_writes_back() {
    let db = TestDb::new().await;
    let schema = db.schema.clone();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "paid").await?;
            if true {
                panic!("ledger exploded");
            }
            Ok::<String, BoxError>(String::new())
        },
    );
    let out = manager(&db).run(op).await;
    assert!(
        matches!(&out, Err(Error::Panic { message }) if message == "Got panic \"ledger exploded\""),
        "{out:?}"
    );
    assert!(db.ledger().await.is_empty());
    assert_eq!(
        db.repository
            .get(TARGET, "k")
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_attempt_rolls_its_writes_back() {
    let db = TestDb::new().await;
    let manager = manager(&db);
    let (inserted_tx, inserted_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let schema = db.schema.clone();
    let stale = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "stale").await?;
            let _ = inserted_tx.send(session.attempt());
            let _ = release_rx.await;
            Ok::<_, BoxError>("stale".to_owned())
        },
    )
    .timeout(10 * MINUTE);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(stale).await }
    });
    assert_eq!(inserted_rx.await.unwrap(), 1);

    // The holder's timeout passes; another call takes the record over and commits.
    db.shift_back(11 * MINUTE).await;
    let schema = db.schema.clone();
    let fresh = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            assert_eq!(session.attempt(), 2);
            insert(&schema, &session, "k", "fresh").await?;
            Ok::<_, BoxError>("fresh".to_owned())
        },
    )
    .timeout(10 * MINUTE);
    let out = manager.run(fresh).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(r)) if r == "fresh"),
        "{out:?}"
    );

    release_tx.send(()).unwrap();
    let out = holder.await.unwrap();
    assert!(matches!(out, Err(Error::Superseded { .. })), "{out:?}");
    assert_eq!(db.ledger().await, ["fresh"]);
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!((record.status, record.attempt), (Status::Finished, 2));
    assert_eq!(record.result.as_deref(), Some(&b"\"fresh\""[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_found_at_finish_rolls_the_writes_back() {
    let db = TestDb::new().await;
    let manager = manager(&db);
    let (inserted_tx, inserted_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let schema = db.schema.clone();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "late").await?;
            let _ = inserted_tx.send(());
            let _ = release_rx.await;
            Ok::<_, BoxError>("late".to_owned())
        },
    )
    .expiration(60 * MINUTE);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    inserted_rx.await.unwrap();
    db.shift_back(120 * MINUTE).await;
    release_tx.send(()).unwrap();
    let out = holder.await.unwrap();
    assert!(matches!(out, Err(Error::Expired { .. })), "{out:?}");
    assert!(db.ledger().await.is_empty());
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::Expired));
    assert_eq!(
        record.error.as_deref(),
        Some(FailureKind::Expired.message())
    );
}

#[tokio::test]
async fn an_aborted_transaction_fails_the_attempt_and_the_next_call_runs() {
    let db = TestDb::new().await;
    let manager = manager(&db);
    let schema = db.schema.clone();
    // The operation swallows its own SQL error and claims success: the transaction is
    // aborted, so nothing may be reported as done.
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "lost").await?;
            let mut tx = session.transaction().await?;
            let bad = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
            assert!(bad.is_err());
            Ok::<_, BoxError>("claimed success".to_owned())
        },
    );
    let out = manager.run(op).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Backend(_)))),
        "{out:?}"
    );
    assert!(db.ledger().await.is_empty());
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::CommitFailed));
    assert_eq!(
        record.error.as_deref(),
        Some(FailureKind::CommitFailed.message())
    );

    let schema = db.schema.clone();
    let retry = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            insert(&schema, &session, "k", "paid").await?;
            Ok::<_, BoxError>("paid".to_owned())
        },
    );
    assert_eq!(manager.call(retry).await.unwrap(), "paid");
    assert_eq!(db.ledger().await, ["paid"]);
}

#[tokio::test]
async fn the_session_closes_when_the_attempt_finishes() {
    let db = TestDb::new().await;
    let kept = Arc::new(std::sync::Mutex::new(None));
    let op = operation(TARGET, "k", "pay 10", {
        let kept = Arc::clone(&kept);
        move |session: PgSession| async move {
            assert!(!session.is_closed().await);
            *kept.lock().unwrap() = Some(session.clone());
            Ok::<_, BoxError>("ok".to_owned())
        }
    });
    manager(&db).call(op).await.unwrap();
    let session = kept.lock().unwrap().take().unwrap();
    assert!(session.is_closed().await);
    assert!(matches!(
        session.transaction().await,
        Err(RepositoryError::SessionClosed)
    ));
}

/// Every outcome gives the connection back: on a pool of ONE connection, a leaked
/// transaction or connection would make the next call time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_releases_the_connection() {
    let db = TestDb::with_pool_size(1).await;
    let manager = manager(&db);
    let runs = Arc::new(AtomicUsize::new(0));
    let writer = |key: &'static str, outcome: &'static str| {
        let schema = db.schema.clone();
        let runs = Arc::clone(&runs);
        operation(
            TARGET,
            key,
            "payload",
            move |session: PgSession| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(&schema, &session, key, outcome).await?;
                match outcome {
                    "error" => Err::<String, BoxError>("no".into()),
                    "panic" => panic!("no"),
                    _ => Ok(outcome.to_owned()),
                }
            },
        )
    };
    for _ in 0..3 {
        assert!(manager.call(writer("ok", "ok")).await.is_ok());
        assert!(manager.call(writer("error", "error")).await.is_err());
        assert!(manager.call(writer("panic", "panic")).await.is_err());
    }

    // A call whose future is dropped mid-operation.
    let (started_tx, started_rx) = oneshot::channel();
    let schema = db.schema.clone();
    let pending = operation(
        TARGET,
        "dropped",
        "payload",
        move |session: PgSession| async move {
            insert(&schema, &session, "dropped", "dropped").await?;
            let _ = started_tx.send(());
            std::future::pending::<Result<String, BoxError>>().await
        },
    );
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(pending).await }
    });
    started_rx.await.unwrap();
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    manager.flush().await;
    let record = db.repository.get(TARGET, "dropped").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);

    // The single connection is free and clean.
    assert_eq!(db.ledger().await, ["ok"]);
    assert_eq!(runs.load(Ordering::SeqCst), 1 + 3 + 3);
    let in_tx: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .bind(&db.schema)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(in_tx, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_the_replay_cache_need_no_database() {
    let db = TestDb::new().await;
    let cache = ana_core::ReplayCache::new(1 << 20);
    let manager = manager(&db).with_replay_cache(cache.clone());
    let pay = |note: &'static str| {
        operation(TARGET, "k", "pay 10", move |_: PgSession| async move {
            Ok::<_, BoxError>(note.to_owned())
        })
    };
    let first = manager.run(pay("paid")).await.unwrap();
    assert_eq!(first, Outcome::Executed("paid".to_owned()));
    // The database is gone: the recorded result still replays, from this process's cache.
    db.pool.close().await;
    let again = manager.run(pay("paid twice")).await.unwrap();
    assert_eq!(again, Outcome::Replayed("paid".to_owned()));
    assert_eq!(cache.hits(), 1);
    // Anything else needs the database.
    let other = operation(TARGET, "other", "pay 10", |_: PgSession| async {
        Ok::<_, BoxError>("never".to_owned())
    });
    let refused = manager.run(other).await;
    assert!(
        matches!(refused, Err(Error::Repository(ref e)) if e.is_transient()),
        "{refused:?}"
    );
}

/// A database whose repository has a pool of one connection, and a connection of another pool
/// to watch that one from.
async fn one_connection_and_an_observer() -> (TestDb, PoolConnection<Postgres>) {
    let db = TestDb::with_pool_size(1).await;
    let observer = common::pool(&db.url, "observer", 1)
        .await
        .acquire()
        .await
        .unwrap();
    (db, observer)
}

/// Terminates the connections of `db`'s pool from `other`, waiting (up to 10 s) until their
/// backends are gone.
async fn terminate_pool_connection(db: &TestDb, other: &mut sqlx::PgConnection) -> Vec<bool> {
    sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.schema)
    .fetch_all(other)
    .await
    .unwrap()
}

/// Runs an operation on key `k` whose body `then` starts once the server has terminated the
/// pool's one connection: the claim's, which the attempt holds.
async fn run_after_the_connection_is_killed<F, Fut>(
    db: &TestDb,
    other: &mut sqlx::PgConnection,
    manager: &TestManager,
    then: F,
) -> Result<Outcome<String>, Error<BoxError>>
where
    F: FnOnce(PgSession) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, BoxError>> + Send,
{
    let (running_tx, running_rx) = oneshot::channel();
    let (killed_tx, killed_rx) = oneshot::channel::<()>();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            let _ = running_tx.send(());
            let _ = killed_rx.await;
            then(session).await
        },
    );
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    running_rx.await.unwrap();
    assert_eq!(terminate_pool_connection(db, other).await, [true]);
    killed_tx.send(()).unwrap();
    call.await.unwrap()
}

/// The state (`idle`, `idle in transaction`, ...) of the one connection of `db`'s pool, read
/// from another connection.
async fn pool_connection_state(db: &TestDb, other: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT state FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.schema)
    .fetch_all(other)
    .await
    .unwrap()
}

/// An operation that never asks for its transaction runs on the claim's connection with no
/// transaction open, and its record turns Finished all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_never_opens_its_transaction_finishes_without_one() {
    let (db, mut other) = one_connection_and_an_observer().await;
    let manager = manager(&db);
    let (running_tx, running_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            let _ = running_tx.send(session.is_closed().await);
            let _ = release_rx.await;
            Ok::<_, BoxError>("sent elsewhere".to_owned())
        },
    );
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    assert!(!running_rx.await.unwrap(), "the session is open");
    // The claim's connection is held by the attempt, outside any transaction.
    assert_eq!(pool_connection_state(&db, &mut other).await, ["idle"]);
    release_tx.send(()).unwrap();
    assert_eq!(
        call.await.unwrap().unwrap(),
        Outcome::Executed("sent elsewhere".to_owned())
    );
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    assert_eq!(
        manager
            .call(operation(TARGET, "k", "pay 10", |_: PgSession| async {
                Ok::<_, BoxError>("twice".to_owned())
            }))
            .await
            .unwrap(),
        "sent elsewhere"
    );
}

/// `BEGIN` on a connection the server dropped: `transaction()` reports the store's error,
/// the session is closed, and an operation that returns a result anyway does not finish its
/// record: the attempt is Failed and the next call runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_begin_fails_the_attempt() {
    let (db, mut other) = one_connection_and_an_observer().await;
    let manager = manager(&db);
    let (seen_tx, seen_rx) = oneshot::channel();
    let outcome =
        run_after_the_connection_is_killed(&db, &mut other, &manager, |session| async move {
            let first = session.transaction().await.map(drop);
            let second = session.transaction().await.map(drop);
            let _ = seen_tx.send((first, second, session.is_closed().await));
            Ok("ignored the error".to_owned())
        })
        .await;
    assert!(
        matches!(
            outcome,
            Err(Error::Repository(RepositoryError::SessionClosed))
        ),
        "{outcome:?}"
    );
    manager.flush().await;
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::BeginFailed));
    assert_eq!(
        record.error.as_deref(),
        Some(FailureKind::BeginFailed.message())
    );

    // What the operation saw: the store's error, then a closed session.
    let (first, second, closed) = seen_rx.await.unwrap();
    assert!(matches!(first, Err(ref e) if e.is_transient()), "{first:?}");
    assert!(
        matches!(second, Err(RepositoryError::SessionClosed)),
        "{second:?}"
    );
    assert!(closed);
    // The pool replaced the dropped connection: the next call on the key runs.
    let retried = operation(TARGET, "k", "pay 10", |_: PgSession| async {
        Ok::<_, BoxError>("second attempt".to_owned())
    });
    assert_eq!(manager.call(retried).await.unwrap(), "second attempt");
}

/// The claim's connection dropped by the server while an operation that opened no
/// transaction ran (an idle timeout, a proxy): nothing was lost with it, so the record still
/// turns Finished, through another connection, and the result replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_without_a_transaction_survives_a_dropped_connection() {
    let (db, mut other) = one_connection_and_an_observer().await;
    let manager = manager(&db);
    let outcome = run_after_the_connection_is_killed(&db, &mut other, &manager, |_| async {
        Ok("charged".to_owned())
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Executed("charged".to_owned()));
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    let again = operation(TARGET, "k", "pay 10", |_: PgSession| async {
        Ok::<_, BoxError>("charged twice".to_owned())
    });
    assert_eq!(manager.call(again).await.unwrap(), "charged");
}

/// A `transaction()` call dropped while its `BEGIN` is in flight: the connection comes back
/// to the pool outside any transaction, and the attempt is Failed (`FailureKind::BeginFailed`).
/// On one thread, so nothing can answer `BEGIN` between the first poll and the drop.
#[tokio::test]
async fn a_cancelled_begin_leaves_no_transaction_behind() {
    let db = TestDb::with_pool_size(1).await;
    let manager = manager(&db);
    let op = operation(
        TARGET,
        "k",
        "pay 10",
        move |session: PgSession| async move {
            {
                let mut begin = std::pin::pin!(session.transaction());
                let pending = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(begin.as_mut().poll(cx).is_pending())
                })
                .await;
                assert!(pending, "BEGIN answered at once");
            }
            assert!(session.is_closed().await);
            Ok::<_, BoxError>("gave up on its transaction".to_owned())
        },
    );
    let outcome = manager.run(op).await;
    assert!(
        matches!(
            outcome,
            Err(Error::Repository(RepositoryError::SessionClosed))
        ),
        "{outcome:?}"
    );
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::BeginFailed));
    assert_eq!(
        record.error.as_deref(),
        Some(FailureKind::BeginFailed.message())
    );
    // The pool's one connection: `SAVEPOINT` works only inside a transaction block.
    let mut connection = db.pool.acquire().await.unwrap();
    let stale = sqlx::query("SAVEPOINT ana_probe")
        .execute(&mut *connection)
        .await
        .is_ok();
    assert!(!stale, "the connection came back inside a transaction");
}

/// A finish whose statement was applied but whose answer was lost runs again and changes
/// nothing: the record is this claim's own, finished, so the answer is Done (not Superseded,
/// which would fail a call whose work is recorded). Another claim's finished record stays
/// Superseded.
#[tokio::test]
async fn a_finish_already_applied_by_the_same_claim_is_done() {
    use ana_core::{Claim, ClaimRequest, Completion, IdempotencyRepository, Payload, RecordId};

    let db = TestDb::new().await;
    let now = db.now().await;
    let mut sessions = Vec::new();
    for key in ["mine", "theirs"] {
        let request = ClaimRequest {
            target: TARGET,
            key,
            fingerprint: "pay 10".fingerprint(),
            reference_time: now,
            timeout: Some(MINUTE),
            expiration: None,
        };
        let Claim::Acquired { lease, session, .. } = db.repository.claim(&request).await.unwrap()
        else {
            panic!("a new key is claimed");
        };
        sessions.push((key, lease, session));
    }
    // The lost try's effect on "mine"; "theirs" finished by another claim of the same attempt.
    sqlx::query(AssertSqlSafe(db.sql(
        "UPDATE {s}.tracked_operations
         SET status = 'finished', result = 'ok', finished_at = now(),
             claim = CASE WHEN key = 'theirs' THEN claim + 1000 ELSE claim END",
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    for (key, lease, session) in sessions {
        let id = RecordId::new(TARGET, key);
        let done = db
            .repository
            .complete(session, id, lease, Some(b"ok"))
            .await
            .unwrap();
        let expected = if key == "mine" {
            Completion::Done
        } else {
            Completion::Superseded
        };
        assert_eq!(done, expected, "{key}");
    }
}
