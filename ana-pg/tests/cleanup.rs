//! Clean-up (exact rows, bounded batches, SKIP LOCKED, background task) and migrations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use ana_core::chrono::{DateTime, TimeDelta, Utc};
use ana_core::{FailureKind, IdempotencyRepository, Payload, Status, TrackedOperation};
use ana_pg::sqlx::{self, AssertSqlSafe, Connection};
use ana_pg::{CleanupConfig, PgRepository};
use common::TestDb;

const TARGET: &str = "[POST]/cleanup";
const TIMED_OUT: &str = FailureKind::TimedOut.message();

async fn failure(db: &TestDb, key: &str) -> Option<FailureKind> {
    db.repository
        .get(TARGET, key)
        .await
        .unwrap()
        .and_then(|r| r.failure)
}

fn record(key: &str, status: Status, now: DateTime<Utc>) -> TrackedOperation {
    let mut record = TrackedOperation::new(TARGET, key, status, "payload".fingerprint(), now);
    record.started_at = Some(now);
    record.attempt = 1;
    if status == Status::Finished {
        record.result = Some(b"\"done\"".to_vec());
        record.finished_at = Some(now);
    }
    record
}

async fn status(db: &TestDb, key: &str) -> Option<(Status, u32, Option<String>)> {
    db.repository
        .get(TARGET, key)
        .await
        .unwrap()
        .map(|r| (r.status, r.error_count, r.error))
}

/// Seeds one record of each kind the clean-up must tell apart.
async fn seed_mix(db: &TestDb) {
    let now = db.now().await;
    let hour = TimeDelta::hours(1);
    let mut r = record("running-timed-out", Status::Running, now - hour);
    r.timeout = Some(now - TimeDelta::minutes(1));
    db.seed(&r).await;
    let mut r = record("running-timed-out-2", Status::Running, now - hour);
    r.timeout = Some(now - TimeDelta::minutes(2));
    r.error_count = 3;
    db.seed(&r).await;
    let mut r = record("running-held", Status::Running, now);
    r.timeout = Some(now + hour);
    db.seed(&r).await;
    db.seed(&record("running-no-timeout", Status::Running, now - hour))
        .await;
    let mut r = record("failed-past-timeout", Status::Failed, now - hour);
    r.timeout = Some(now - TimeDelta::minutes(1));
    r.error = Some("earlier".into());
    db.seed(&r).await;
    let mut r = record("finished-expired", Status::Finished, now - hour * 3);
    r.expiration = Some(now - hour * 2);
    db.seed(&r).await;
    let mut r = record("failed-expired", Status::Failed, now - hour * 3);
    r.expiration = Some(now - TimeDelta::minutes(1));
    db.seed(&r).await;
    let mut r = record("finished-live", Status::Finished, now);
    r.expiration = Some(now + hour);
    db.seed(&r).await;
    db.seed(&record(
        "finished-forever",
        Status::Finished,
        now - hour * 3,
    ))
    .await;
}

#[tokio::test]
async fn fail_timed_out_fails_exactly_running_rows_past_their_timeout() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    assert_eq!(db.repository.fail_timed_out(100).await.unwrap(), 2);
    assert_eq!(
        status(&db, "running-timed-out").await,
        Some((Status::Failed, 1, Some(TIMED_OUT.to_owned())))
    );
    assert_eq!(
        status(&db, "running-timed-out-2").await,
        Some((Status::Failed, 4, Some(TIMED_OUT.to_owned())))
    );
    for key in ["running-timed-out", "running-timed-out-2"] {
        assert_eq!(
            failure(&db, key).await,
            Some(FailureKind::TimedOut),
            "{key}"
        );
    }
    for (key, expected) in [
        ("running-held", Status::Running),
        ("running-no-timeout", Status::Running),
        ("failed-past-timeout", Status::Failed),
        ("finished-expired", Status::Finished),
        ("failed-expired", Status::Failed),
        ("finished-live", Status::Finished),
        ("finished-forever", Status::Finished),
    ] {
        let (status, _, error) = status(&db, key).await.unwrap();
        assert_eq!(status, expected, "{key}");
        assert_ne!(error.as_deref(), Some(TIMED_OUT), "{key}");
        assert_ne!(
            failure(&db, key).await,
            Some(FailureKind::TimedOut),
            "{key}"
        );
    }
    assert_eq!(db.repository.fail_timed_out(100).await.unwrap(), 0);
}

#[tokio::test]
async fn delete_expired_deletes_exactly_the_expired_rows() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    assert_eq!(db.repository.delete_expired(100).await.unwrap(), 2);
    assert_eq!(status(&db, "finished-expired").await, None);
    assert_eq!(status(&db, "failed-expired").await, None);
    for key in [
        "running-timed-out",
        "running-timed-out-2",
        "running-held",
        "running-no-timeout",
        "failed-past-timeout",
        "finished-live",
        "finished-forever",
    ] {
        assert!(status(&db, key).await.is_some(), "{key}");
    }
    assert_eq!(db.repository.delete_expired(100).await.unwrap(), 0);
}

/// A Running record past its expiration stays while its holder may still be at work (no
/// timeout, or its timeout ahead): deleted, it would let a new call run beside the holder.
#[tokio::test]
async fn delete_expired_keeps_running_rows_a_holder_may_still_work_on() {
    let db = TestDb::new().await;
    let now = db.now().await;
    let hour = TimeDelta::hours(1);
    for (key, timeout) in [
        ("held", Some(now + hour)),
        ("no-timeout", None),
        ("timed-out", Some(now - hour)),
    ] {
        let mut r = record(key, Status::Running, now - hour * 3);
        r.expiration = Some(now - hour * 2);
        r.timeout = timeout;
        db.seed(&r).await;
    }
    assert_eq!(db.repository.delete_expired(100).await.unwrap(), 1);
    assert_eq!(status(&db, "timed-out").await, None);
    assert!(status(&db, "held").await.is_some());
    assert!(status(&db, "no-timeout").await.is_some());
}

#[tokio::test]
async fn retention_keeps_recently_expired_rows() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    // finished-expired expired 2 hours ago, failed-expired 1 minute ago.
    let repository = db
        .repository
        .clone()
        .with_retention(Duration::from_secs(3600));
    assert_eq!(repository.delete_expired(100).await.unwrap(), 1);
    assert_eq!(status(&db, "finished-expired").await, None);
    assert!(status(&db, "failed-expired").await.is_some());
}

#[tokio::test]
async fn batches_are_bounded_and_locked_rows_are_skipped() {
    let db = TestDb::new().await;
    let now = db.now().await;
    for i in 0..5 {
        let mut r = record(
            &format!("expired-{i}"),
            Status::Failed,
            now - TimeDelta::hours(2),
        );
        r.expiration = Some(now - TimeDelta::hours(1));
        db.seed(&r).await;
    }
    // Another transaction holds one of them.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(db.sql(
        "SELECT 1 FROM {s}.tracked_operations WHERE key = 'expired-0' FOR UPDATE",
    )))
    .execute(&mut *tx)
    .await
    .unwrap();

    // Limit 3: three rows per call; the locked row is skipped without waiting.
    assert_eq!(db.repository.delete_expired(3).await.unwrap(), 3);
    assert_eq!(db.repository.delete_expired(3).await.unwrap(), 1);
    assert_eq!(db.repository.delete_expired(3).await.unwrap(), 0);
    assert!(status(&db, "expired-0").await.is_some());

    tx.rollback().await.unwrap();
    assert_eq!(db.repository.delete_expired(3).await.unwrap(), 1);
    assert_eq!(status(&db, "expired-0").await, None);
}

#[tokio::test]
async fn a_holder_failed_by_the_clean_up_is_superseded_and_rolls_back() {
    let db = TestDb::new().await;
    let manager: ana_core::Manager<&'static str, String, ana_pg::PgSession> =
        ana_core::Manager::new(db.repository.clone());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let schema = db.schema.clone();
    let op = ana_core::operation(
        TARGET,
        "slow",
        "payload",
        move |s: ana_pg::PgSession| async move {
            {
                let mut tx = s.transaction().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO \"{schema}\".ledger (key, note) VALUES ('slow', 'slow')"
                )))
                .execute(&mut *tx)
                .await?;
            }
            let _ = started_tx.send(());
            let _ = release_rx.await;
            Ok::<_, ana_core::BoxError>("slow".to_owned())
        },
    )
    .timeout(Duration::from_secs(60));
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    started_rx.await.unwrap();
    db.shift_back(Duration::from_secs(61)).await;
    assert_eq!(db.repository.fail_timed_out(10).await.unwrap(), 1);
    release_tx.send(()).unwrap();
    let out = holder.await.unwrap();
    assert!(
        matches!(out, Err(ana_core::Error::Superseded { .. })),
        "{out:?}"
    );
    assert!(db.ledger().await.is_empty());
    assert_eq!(
        status(&db, "slow").await,
        Some((Status::Failed, 1, Some(TIMED_OUT.to_owned())))
    );
    assert_eq!(failure(&db, "slow").await, Some(FailureKind::TimedOut));
}

#[tokio::test]
async fn the_background_task_cleans_and_shuts_down() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    let handle = db.repository.spawn_cleanup(CleanupConfig {
        interval: Duration::from_secs(3600),
        batch_size: 1,
        ..CleanupConfig::default()
    });
    // The first round runs at once; wait for it through the report channel.
    let mut reports = handle.subscribe();
    let report = reports
        .wait_for(|report| report.rounds >= 1)
        .await
        .unwrap()
        .clone();
    assert_eq!((report.failed, report.deleted, report.errors), (2, 2, 0));
    assert_eq!(status(&db, "finished-expired").await, None);
    assert_eq!(
        status(&db, "running-timed-out").await.unwrap().0,
        Status::Failed
    );
    assert_eq!(
        status(&db, "running-held").await.unwrap().0,
        Status::Running
    );
    let last = handle.shutdown().await;
    assert_eq!(last.rounds, 1, "the next round is an hour away");
}

#[tokio::test]
async fn the_background_task_counts_store_errors_and_goes_on() {
    let db = TestDb::new().await;
    let missing = PgRepository::with_schema(db.pool.clone(), "ana_never_migrated").unwrap();
    let handle = missing.spawn_cleanup(CleanupConfig::every(Duration::from_millis(1)));
    let mut reports = handle.subscribe();
    let report = reports
        .wait_for(|report| report.rounds >= 2)
        .await
        .unwrap()
        .clone();
    assert_eq!(report.errors, report.rounds);
    assert!(matches!(
        report.last_error.as_deref(),
        Some(ana_core::RepositoryError::Backend(_))
    ));
    drop(reports);
    handle.shutdown().await;
}

/// A schema made by an earlier release (migration 1 only, records in it) is brought up to
/// date: its records stay readable, and claims and finishes work on old and new keys.
#[tokio::test]
async fn an_earlier_schema_is_migrated_with_its_records() {
    use ana_core::{Claim, ClaimRequest, Completion, RecordId};

    let db = TestDb::new().await;
    let schema = common::unique_schema();
    let quoted = format!("\"{schema}\"");
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {quoted};
         CREATE TABLE {quoted}.schema_migrations (
            version bigint PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {quoted}.schema_migrations (version, description)
            VALUES (1, 'tracked_operations');
         {}
         INSERT INTO {quoted}.tracked_operations
            (target, key, status, fingerprint, reference_time, result, finished_at, attempt)
            VALUES ('{TARGET}', 'old', 'finished', '\\x70617966696e6765727072696e743136'::bytea,
                    now(), 'paid'::bytea, now(), 1);",
        include_str!("../migrations/0001_tracked_operations.sql").replace("{schema}", &quoted)
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);

    let repository = PgRepository::with_schema(db.pool.clone(), &schema).unwrap();
    repository.migrate().await.unwrap();
    let old = repository.get(TARGET, "old").await.unwrap().unwrap();
    assert_eq!(
        (old.status, old.result.as_deref()),
        (Status::Finished, Some(&b"paid"[..]))
    );
    let now = db.now().await;
    let request = ClaimRequest {
        target: TARGET,
        key: "new",
        fingerprint: "payload".fingerprint(),
        reference_time: now,
        timeout: None,
        expiration: None,
    };
    let Claim::Acquired { lease, session, .. } = repository.claim(&request).await.unwrap() else {
        panic!("a new key is claimed");
    };
    let id = RecordId::new(TARGET, "new");
    let done = repository
        .complete(session, id, lease, Some(b"ok"))
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {quoted} CASCADE")))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// A schema at migration 2 with failures and an unencodable result recorded the earlier way
/// (kinds only in the message text, the marker bytes for a result) is brought up to date:
/// each failure gets its kind from its message, the marker becomes a Finished record without
/// a result (answered as a codec error, never run again), and running migration 3 again
/// changes nothing.
#[tokio::test]
async fn migration_3_gives_failures_their_kinds_and_drops_the_unencodable_marker() {
    use ana_core::{Error, Manager, operation};
    use ana_pg::PgSession;

    let db = TestDb::new().await;
    let schema = common::unique_schema();
    let quoted = format!("\"{schema}\"");
    let marker = "\\xff616e613a2074686520726573756c7420636f756c64206e6f7420626520656e636f646564ff";
    let fingerprint = "\\x".to_owned() + &hex(*"payload".fingerprint().as_bytes());
    let failed = [
        (
            "cancelled",
            "Operation cancelled before it finished.",
            "cancelled",
        ),
        (
            "timed-out",
            "Operation timed out before it finished.",
            "timed_out",
        ),
        (
            "expired",
            "Operation expired before it finished.",
            "expired",
        ),
        (
            "begin",
            "The operation''s transaction could not be opened.",
            "begin_failed",
        ),
        (
            "commit",
            "The operation''s transaction could not be committed.",
            "commit_failed",
        ),
        ("panic", "Got panic \"boom\"", "panic"),
        ("declined", "card declined", "error"),
        ("empty", "", "error"),
    ];
    let mut rows = String::new();
    for (key, message, _) in failed {
        rows += &format!(
            "INSERT INTO {quoted}.tracked_operations
                (target, key, status, fingerprint, reference_time, error, error_count, attempt)
                VALUES ('{TARGET}', '{key}', 'failed', '{fingerprint}'::bytea, now(),
                        '{message}', 1, 1);"
        );
    }
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {quoted};
         CREATE TABLE {quoted}.schema_migrations (
            version bigint PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {quoted}.schema_migrations (version, description)
            VALUES (1, 'tracked_operations'), (2, 'claims');
         {}
         {}
         {rows}
         INSERT INTO {quoted}.tracked_operations
            (target, key, status, fingerprint, reference_time, started_at, error, error_count,
             attempt)
            VALUES ('{TARGET}', 'retrying', 'running', '{fingerprint}'::bytea, now(), now(),
                    'Got panic \"once\"', 1, 2);
         INSERT INTO {quoted}.tracked_operations
            (target, key, status, fingerprint, reference_time, result, finished_at, attempt)
            VALUES ('{TARGET}', 'unencodable', 'finished', '{fingerprint}'::bytea, now(),
                    '{marker}'::bytea, now(), 1),
                   ('{TARGET}', 'paid', 'finished', '{fingerprint}'::bytea, now(),
                    '\"paid\"'::bytea, now(), 1);",
        include_str!("../migrations/0001_tracked_operations.sql").replace("{schema}", &quoted),
        include_str!("../migrations/0002_claims.sql").replace("{schema}", &quoted),
    )))
    .execute(&mut *conn)
    .await
    .unwrap();

    let repository = PgRepository::with_schema(db.pool.clone(), &schema).unwrap();
    repository.migrate().await.unwrap();
    let check = || async {
        for (key, message, kind) in failed {
            let record = repository.get(TARGET, key).await.unwrap().unwrap();
            assert_eq!(record.failure.map(FailureKind::as_str), Some(kind), "{key}");
            assert_eq!(
                record.error.as_deref(),
                Some(&*message.replace("''", "'")),
                "{key}"
            );
        }
        let retrying = repository.get(TARGET, "retrying").await.unwrap().unwrap();
        assert_eq!(retrying.failure, Some(FailureKind::Panic));
        let unencodable = repository
            .get(TARGET, "unencodable")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (unencodable.status, unencodable.result),
            (Status::Finished, None)
        );
        let paid = repository.get(TARGET, "paid").await.unwrap().unwrap();
        assert_eq!(paid.result.as_deref(), Some(&b"\"paid\""[..]));
        assert_eq!(paid.failure, None);
    };
    check().await;
    // Migration 3 run again (as by hand, or a repeated deploy) changes nothing.
    sqlx::raw_sql(AssertSqlSafe(
        include_str!("../migrations/0003_failure_kinds.sql").replace("{schema}", &quoted),
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    check().await;

    let manager: Manager<&str, String, PgSession> = Manager::new(repository.clone());
    let runs = std::sync::atomic::AtomicUsize::new(0);
    for key in ["unencodable", "unencodable"] {
        let out = manager
            .call(operation(TARGET, key, "payload", |_: PgSession| async {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>("again".to_owned())
            }))
            .await;
        assert!(matches!(out, Err(Error::Codec(_))), "{out:?}");
    }
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(conn);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {quoted} CASCADE")))
        .execute(&db.pool)
        .await
        .unwrap();
}

fn hex(bytes: impl IntoIterator<Item = u8>) -> String {
    bytes
        .into_iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_and_concurrently() {
    let db = TestDb::new().await;
    let schema = common::unique_schema();
    let repository = PgRepository::with_schema(db.pool.clone(), &schema).unwrap();
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let repository = repository.clone();
        runs.spawn(async move { repository.migrate().await });
    }
    while let Some(result) = runs.join_next().await {
        result.unwrap().unwrap();
    }
    repository.migrate().await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // The schema works.
    assert_eq!(repository.get(TARGET, "k").await.unwrap(), None);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_row_is_a_typed_error() {
    let db = TestDb::new().await;
    db.exec(
        "ALTER TABLE {s}.tracked_operations DROP CONSTRAINT tracked_operations_fingerprint_check",
    )
    .await;
    db.exec(
        "INSERT INTO {s}.tracked_operations (target, key, status, fingerprint, reference_time)
         VALUES ('[POST]/cleanup', 'bad', 'finished', '\\x0102', now())",
    )
    .await;
    let out = db.repository.get(TARGET, "bad").await;
    assert!(
        matches!(&out, Err(ana_core::RepositoryError::Corrupt { detail }) if detail.contains("fingerprint")),
        "{out:?}"
    );
}
