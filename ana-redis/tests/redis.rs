//! ana-redis on a single Redis server (`REDIS_URL`, default `redis://127.0.0.1:6379`):
//! retention (TTL), an unreachable server, concurrent claims, fencing, corrupt records.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::chrono::{DateTime, TimeDelta, Utc};
use ana_core::{
    Claim, ClaimRequest, Completion, Error, Failure, FailureKind, Fingerprint,
    IdempotencyRepository, Lease, Manager, Operation, RecordId, RepositoryError, Status,
    TrackedOperation, operation,
};
use ana_redis::redis::{self, AsyncCommands};
use ana_redis::{RedisRepository, RedisSession};
use common::{connect, expiry, random_prefix, redis_url};
use tokio::sync::Barrier;

const TARGET: &str = "[POST]/payments";
const HOUR: Duration = Duration::from_secs(3600);

async fn repository() -> RedisRepository {
    RedisRepository::from_url(redis_url().await)
        .expect("REDIS_URL is a URL")
        .with_prefix(random_prefix())
}

/// `at` truncated to the microseconds that records keep.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap()
}

fn request<'a>(key: &'a str, fingerprint: Fingerprint) -> ClaimRequest<'a> {
    ClaimRequest {
        target: TARGET,
        key,
        fingerprint,
        reference_time: Utc::now(),
        timeout: Some(Duration::from_secs(30)),
        expiration: None,
    }
}

async fn acquire(
    repository: &RedisRepository,
    request: &ClaimRequest<'_>,
) -> (Lease, RedisSession) {
    match repository.claim(request).await.expect("claim") {
        Claim::Acquired { lease, session, .. } => (lease, session),
        Claim::Existing { record, .. } => panic!("expected to acquire, found {record:?}"),
    }
}

/// An operation on `key` that counts its runs in `runs` and answers `ran`.
fn counted(
    runs: &Arc<AtomicUsize>,
    key: &'static str,
) -> impl Operation<RedisSession, Payload = &'static str, Output = String, Error = std::io::Error> {
    let runs = Arc::clone(runs);
    operation(TARGET, key, "body", move |_ctx: RedisSession| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("ran".to_owned())
    })
}

/// A claim that takes a standing record over: its lease, session and previous status.
async fn take_over(
    repository: &RedisRepository,
    request: &ClaimRequest<'_>,
) -> (Lease, RedisSession, Option<Status>) {
    match repository.claim(request).await.expect("claim") {
        Claim::Acquired {
            lease,
            session,
            previous,
        } => (lease, session, previous),
        Claim::Existing { record, .. } => panic!("expected a takeover, found {record:?}"),
    }
}

fn id(key: &str) -> RecordId<'_> {
    RecordId::new(TARGET, key)
}

fn failure(message: &str) -> Failure<'_> {
    Failure::new(FailureKind::Error, message)
}

/// A record with an expiration lives until its expiration plus the retention after it, while
/// Running and once Finished.
#[tokio::test]
async fn ttl_is_the_expiration_plus_the_retention() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let expiration = micros(Utc::now() + TimeDelta::hours(2));
    let request = ClaimRequest {
        expiration: Some(expiration),
        ..request("ttl", Fingerprint::of("body"))
    };
    let (lease, session) = acquire(&repository, &request).await;
    let name = repository.record_key(TARGET, "ttl");
    let expected_ms = (expiration.timestamp_micros() + 3_600_000_000).div_euclid(1000);
    let (pttl, at) = expiry(&mut redis, &name).await;
    assert_eq!(at, expected_ms, "Running: PEXPIREAT expiration + 1h");
    assert!(
        pttl > 3 * 3_600_000 - 60_000 && pttl <= 3 * 3_600_000,
        "{pttl}"
    );

    let done = repository
        .complete(session.clone(), id("ttl"), lease, Some(b"\"ok\""))
        .await
        .expect("complete");
    assert_eq!(done, Completion::Done);
    assert_eq!(expiry(&mut redis, &name).await.1, expected_ms, "Finished");
    let stored = repository
        .get(TARGET, "ttl")
        .await
        .expect("get")
        .expect("a record");
    assert_eq!(stored.expiration, Some(expiration));

    // With a custom retention, the TTL follows it.
    let repository = repository.with_retention_after_expiration(Duration::from_secs(90));
    let request = ClaimRequest {
        expiration: Some(expiration),
        ..self::request("ttl-90s", Fingerprint::of("body"))
    };
    acquire(&repository, &request).await;
    let name = repository.record_key(TARGET, "ttl-90s");
    let expected_ms = (expiration.timestamp_micros() + 90_000_000).div_euclid(1000);
    assert_eq!(expiry(&mut redis, &name).await.1, expected_ms);
}

/// A Running record is kept at least until its timeout, even past its expiration plus
/// retention, so it never vanishes under the attempt that holds it.
#[tokio::test]
async fn running_record_lives_until_its_timeout() {
    let repository = repository()
        .await
        .with_retention_after_expiration(Duration::ZERO);
    let mut redis = connect(&redis_url().await).await;
    let request = ClaimRequest {
        expiration: Some(Utc::now() + TimeDelta::minutes(1)),
        timeout: Some(Duration::from_secs(600)),
        ..request("held", Fingerprint::of("body"))
    };
    let (lease, session) = acquire(&repository, &request).await;
    let record = repository.get(TARGET, "held").await.unwrap().unwrap();
    let timeout = record.timeout.expect("a timeout");
    let name = repository.record_key(TARGET, "held");
    assert_eq!(
        expiry(&mut redis, &name).await.1,
        timeout.timestamp_micros().div_euclid(1000)
    );

    // Finished, it is kept until its expiration plus the retention (none here) only.
    let done = repository
        .complete(session, id("held"), lease, Some(b"1"))
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
    let expiration = record.expiration.expect("an expiration");
    assert_eq!(
        expiry(&mut redis, &name).await.1,
        expiration.timestamp_micros().div_euclid(1000)
    );
}

/// A record without an expiration is kept for the retention without expiration after its
/// last write (default seven days), so Redis never grows without bound.
#[tokio::test]
async fn ttl_without_expiration_is_the_retention_floor() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let (lease, session) = acquire(&repository, &request("floor", Fingerprint::of("body"))).await;
    repository
        .complete(session.clone(), id("floor"), lease, Some(b"1"))
        .await
        .expect("complete");
    let name = repository.record_key(TARGET, "floor");
    let seven_days_ms = 7 * 24 * 3_600_000;
    let (pttl, _) = expiry(&mut redis, &name).await;
    assert!(
        pttl > seven_days_ms - 60_000 && pttl <= seven_days_ms,
        "{pttl}"
    );

    let repository = repository.with_retention_without_expiration(HOUR);
    let (lease, session) =
        acquire(&repository, &request("floor-1h", Fingerprint::of("body"))).await;
    repository
        .fail(session.clone(), id("floor-1h"), lease, failure("no"))
        .await
        .expect("fail");
    let (pttl, _) = expiry(&mut redis, &repository.record_key(TARGET, "floor-1h")).await;
    assert!(pttl > 3_600_000 - 60_000 && pttl <= 3_600_000, "{pttl}");
}

/// Redis unreachable: a typed Unavailable error with its source, and the operation not run.
#[tokio::test]
async fn unreachable_redis_is_unavailable_and_nothing_runs() {
    let repository = RedisRepository::from_url("redis://127.0.0.1:1").expect("a URL");
    let manager: Manager<&str, String, RedisSession> = Manager::new(repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let op = {
        let runs = Arc::clone(&runs);
        operation(TARGET, "k", "body", move |_ctx: RedisSession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>("ran".to_owned())
        })
    };
    let out = manager.run(op).await;
    match &out {
        Err(Error::Repository(error @ RepositoryError::Unavailable(_))) => {
            assert!(error.is_transient());
            assert!(error.source().is_some(), "the driver's error is kept");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(matches!(
        repository.get(TARGET, "k").await,
        Err(RepositoryError::Unavailable(_))
    ));
}

/// An unreachable cluster: Unavailable as well.
#[tokio::test]
async fn unreachable_cluster_is_unavailable() {
    let repository = RedisRepository::from_cluster_urls(["redis://127.0.0.1:1"]).expect("a URL");
    let request = request("k", Fingerprint::of("body"));
    match repository.claim(&request).await {
        Err(error @ RepositoryError::Unavailable(_)) => assert!(error.source().is_some()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// 64 concurrent claims of one key: exactly one acquires, the others see it Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_acquire_once() {
    const CALLS: usize = 64;
    let repository = repository().await;
    let barrier = Arc::new(Barrier::new(CALLS));
    let tasks: Vec<_> = (0..CALLS)
        .map(|_| {
            let (repository, barrier) = (repository.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let request = request("race", Fingerprint::of("body"));
                barrier.wait().await;
                repository.claim(&request).await
            })
        })
        .collect();
    let (mut acquired, mut running) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("claim") {
            Claim::Acquired { lease, .. } => {
                assert_eq!(lease.attempt, 1);
                acquired += 1;
            }
            Claim::Existing { record, .. } => {
                assert_eq!((record.status, record.attempt), (Status::Running, 1));
                running += 1;
            }
        }
    }
    assert_eq!((acquired, running), (1, CALLS - 1));
}

/// An attempt whose record vanished and was created again by a new claim (same attempt
/// number 1) cannot finish the new record: the lease's claim number fences it.
#[tokio::test]
async fn stale_attempt_cannot_finish_a_recreated_record() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let request = request("again", Fingerprint::of("body"));
    let (stale_lease, stale) = acquire(&repository, &request).await;
    let name = repository.record_key(TARGET, "again");
    let _: i64 = redis.del(&name).await.unwrap();

    assert_eq!(
        repository
            .complete(stale.clone(), id("again"), stale_lease, Some(b"\"stale\""))
            .await
            .unwrap(),
        Completion::Expired,
        "a vanished record: nothing to finish"
    );
    assert_eq!(
        repository
            .fail(stale.clone(), id("again"), stale_lease, failure("stale"))
            .await
            .unwrap(),
        Completion::Superseded
    );
    assert_eq!(repository.get(TARGET, "again").await.unwrap(), None);

    let (fresh_lease, fresh) = acquire(&repository, &request).await;
    assert_eq!((stale.attempt(), fresh.attempt()), (1, 1));
    assert_eq!((stale_lease.attempt, fresh_lease.attempt), (1, 1));
    assert_ne!(stale_lease.claim, fresh_lease.claim);
    assert_eq!(
        repository
            .complete(stale, id("again"), stale_lease, Some(b"\"stale\""))
            .await
            .unwrap(),
        Completion::Superseded
    );
    let record = repository.get(TARGET, "again").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Running);
    assert_eq!(
        repository
            .complete(fresh, id("again"), fresh_lease, Some(b"\"fresh\""))
            .await
            .unwrap(),
        Completion::Done
    );
    let record = repository.get(TARGET, "again").await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"\"fresh\""[..]));
}

/// A damaged record is an error, never read as "no record" and never overwritten.
#[tokio::test]
async fn corrupt_records_are_errors() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let name = repository.record_key(TARGET, "bad");
    let _: () = redis
        .hset_multiple(
            &name,
            &[
                ("status", "bogus"),
                ("fp", "0123456789abcdef"),
                ("ref", "1"),
            ],
        )
        .await
        .unwrap();
    let request = request("bad", Fingerprint::of("body"));
    assert!(matches!(
        repository.claim(&request).await,
        Err(RepositoryError::Corrupt { .. })
    ));
    assert!(matches!(
        repository.get(TARGET, "bad").await,
        Err(RepositoryError::Corrupt { .. })
    ));
    let status: String = redis.hget(&name, "status").await.unwrap();
    assert_eq!(status, "bogus", "the claim did not overwrite it");

    // A timeout that is not a number: not claimable, reported as corrupt.
    let name = repository.record_key(TARGET, "bad-time");
    let fingerprint = Fingerprint::of("body");
    let _: () = redis
        .hset_multiple(
            &name,
            &[
                ("status", &b"running"[..]),
                ("fp", fingerprint.as_bytes()),
                ("ref", b"1"),
                ("timeout", b"soon"),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(
        repository
            .claim(&self::request("bad-time", fingerprint))
            .await,
        Err(RepositoryError::Corrupt { .. })
    ));

    // A string that is not a record: corrupt, and left as it is.
    let name = repository.record_key(TARGET, "string");
    let _: () = redis.set(&name, "not a record").await.unwrap();
    assert!(matches!(
        repository
            .claim(&self::request("string", fingerprint))
            .await,
        Err(RepositoryError::Corrupt { .. })
    ));
    assert!(matches!(
        repository.get(TARGET, "string").await,
        Err(RepositoryError::Corrupt { .. })
    ));
    let value: String = redis.get(&name).await.unwrap();
    assert_eq!(value, "not a record");

    // Another type of value under the key: the server's error, kept as the source.
    let name = repository.record_key(TARGET, "list");
    let _: () = redis.rpush(&name, "not a record").await.unwrap();
    match repository.claim(&self::request("list", fingerprint)).await {
        Err(error @ RepositoryError::Backend(_)) => assert!(error.source().is_some()),
        other => panic!("expected Backend, got {other:?}"),
    }
}

/// `restore` writes a record exactly as given; `get` reads it back.
#[tokio::test]
async fn restore_round_trips_every_field() {
    let repository = repository().await;
    let now = Utc::now();
    let at = |minutes: i64| micros(now + TimeDelta::minutes(minutes));
    let mut finished = TrackedOperation::new(
        TARGET,
        "full",
        Status::Finished,
        Fingerprint::of("x"),
        at(-10),
    );
    finished.started_at = Some(at(-9));
    finished.timeout = Some(at(-8));
    finished.expiration = Some(at(60));
    finished.finished_at = Some(at(-7));
    finished.result = Some(vec![0, 159, 146, 150, 255]);
    finished.error_count = 3;
    finished.attempt = 4;
    repository.restore(&finished).await.unwrap();
    assert_eq!(
        repository.get(TARGET, "full").await.unwrap(),
        Some(finished.clone())
    );

    let mut failed = TrackedOperation::new(
        TARGET,
        "failed",
        Status::Failed,
        Fingerprint::of("y"),
        at(0),
    );
    failed.error = Some("card declined ✗".to_owned());
    failed.failure = Some(FailureKind::Cancelled);
    failed.error_count = 1;
    failed.attempt = 1;
    repository.restore(&failed).await.unwrap();
    assert_eq!(
        repository.get(TARGET, "failed").await.unwrap(),
        Some(failed)
    );
}

/// Stores under different prefixes never see each other's records; the key layout is the
/// prefix, the target's length, the target and the key.
#[tokio::test]
async fn prefixes_isolate_stores() {
    let (one, two) = (repository().await, repository().await);
    assert_ne!(one.prefix(), two.prefix());
    assert_eq!(
        one.record_key("[POST]/a", "k:1"),
        format!("{}8:[POST]/a:k:1", one.prefix())
    );
    let runs = Arc::new(AtomicUsize::new(0));
    for repository in [one, two] {
        let manager: Manager<&str, String, RedisSession> = Manager::new(repository);
        let runs = Arc::clone(&runs);
        let op = operation(TARGET, "k", "body", move |_ctx: RedisSession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>("ran".to_owned())
        });
        assert!(!manager.run(op).await.unwrap().is_replayed());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The scripts run after `SCRIPT FLUSH`: NOSCRIPT is answered with `EVAL`, which cannot miss
/// even when another client flushes the scripts again at once.
#[tokio::test]
async fn scripts_reload_after_a_flush() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (lease, session) = acquire(&repository, &request("flushed", Fingerprint::of("b"))).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    let done = repository
        .complete(session.clone(), id("flushed"), lease, Some(b"1"))
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
}

/// The repository shares one connection; when the server drops it, a call may fail as
/// Unavailable (without running the operation) and the next one works on a fresh connection.
#[tokio::test]
async fn a_dropped_connection_is_replaced() {
    // Database 13 is used by this test alone, so its connections are the repository's.
    let base = redis_url().await;
    let base = match base.rsplit_once('/') {
        Some((head, db)) if !db.is_empty() && db.bytes().all(|b| b.is_ascii_digit()) => {
            head.to_owned()
        }
        _ => base.trim_end_matches('/').to_owned(),
    };
    let repository = RedisRepository::from_url(format!("{base}/13"))
        .expect("a URL")
        .with_prefix(random_prefix());
    let manager: Manager<&str, String, RedisSession> = Manager::new(repository);
    let runs = Arc::new(AtomicUsize::new(0));
    let op = |key: &'static str| counted(&runs, key);
    assert_eq!(manager.call(op("before")).await.expect("a call"), "ran");

    let mut admin = connect(&redis_url().await).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut killed = 0;
    for line in clients.lines().filter(|line| line.contains(" db=13 ")) {
        let id = line
            .split(' ')
            .find_map(|field| field.strip_prefix("id="))
            .unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .unwrap();
        killed += 1;
    }
    assert!(
        killed >= 1,
        "the repository's connection was not found:\n{clients}"
    );

    runs.store(0, Ordering::SeqCst);
    let first = manager.run(op("after")).await;
    match &first {
        Ok(_) => {}
        Err(Error::Repository(RepositoryError::Unavailable(_))) => {
            assert_eq!(runs.load(Ordering::SeqCst), 0, "ran without a claim");
        }
        other => panic!("expected success or Unavailable, got {other:?}"),
    }
    let second = manager.run(op("after")).await.expect("a fresh connection");
    assert_eq!(second.into_inner(), "ran");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A complete run twice by the same claim (redis-rs sends a script again when the connection
/// dropped before its answer came back) is Done both times: the record is this claim's own,
/// finished. A stale claim's complete stays Superseded.
#[tokio::test]
async fn a_complete_sent_again_by_its_claim_is_done() {
    let repository = repository().await;
    let request = request("twice", Fingerprint::of("body"));
    let (lease, session) = acquire(&repository, &request).await;
    for _ in 0..2 {
        assert_eq!(
            repository
                .complete(session.clone(), id("twice"), lease, Some(b"\"paid\""))
                .await
                .unwrap(),
            Completion::Done
        );
    }
    let record = repository.get(TARGET, "twice").await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"\"paid\""[..]));
    assert_eq!(
        repository
            .fail(session, id("twice"), lease, failure("late"))
            .await
            .unwrap(),
        Completion::Superseded,
        "a finished record is not failed"
    );
}

/// Records written without a `fail` field get the kind their message stands for; a result
/// holding the marker bytes of a result that could not be encoded reads as none; an unknown
/// kind is corrupt.
#[tokio::test]
async fn failure_kinds_and_missing_results_read_back() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let fingerprint = Fingerprint::of("body");
    let write = |key: &'static str, fields: Vec<(&'static str, Vec<u8>)>| {
        let name = repository.record_key(TARGET, key);
        let mut base: Vec<(&'static str, Vec<u8>)> = vec![
            ("fp", fingerprint.as_bytes().to_vec()),
            ("ref", b"1".to_vec()),
            ("att", b"1".to_vec()),
        ];
        base.extend(fields);
        (name, base)
    };
    let cases = [
        (
            "cancelled",
            vec![
                ("status", b"failed".to_vec()),
                ("err", FailureKind::Cancelled.message().as_bytes().to_vec()),
            ],
        ),
        (
            "panicked",
            vec![
                ("status", b"failed".to_vec()),
                ("err", b"Got panic \"boom\"".to_vec()),
            ],
        ),
        (
            "declined",
            vec![
                ("status", b"failed".to_vec()),
                ("err", b"card declined".to_vec()),
            ],
        ),
        (
            "marker",
            vec![
                ("status", b"finished".to_vec()),
                (
                    "res",
                    b"\xffana: the result could not be encoded\xff".to_vec(),
                ),
            ],
        ),
        (
            "bogus",
            vec![
                ("status", b"failed".to_vec()),
                ("err", b"x".to_vec()),
                ("fail", b"bogus".to_vec()),
            ],
        ),
    ];
    for (key, fields) in cases {
        let (name, fields) = write(key, fields);
        let _: () = redis.hset_multiple(&name, &fields).await.unwrap();
    }
    let get = |key| {
        let repository = repository.clone();
        async move { repository.get(TARGET, key).await }
    };
    let failure_of = |record: Option<TrackedOperation>| record.unwrap().failure;
    assert_eq!(
        failure_of(get("cancelled").await.unwrap()),
        Some(FailureKind::Cancelled)
    );
    assert_eq!(
        failure_of(get("panicked").await.unwrap()),
        Some(FailureKind::Panic)
    );
    assert_eq!(
        failure_of(get("declined").await.unwrap()),
        Some(FailureKind::Error)
    );
    let marker = get("marker").await.unwrap().unwrap();
    assert_eq!((marker.status, marker.result), (Status::Finished, None));
    assert!(matches!(
        get("bogus").await,
        Err(RepositoryError::Corrupt { .. })
    ));

    // Written by this store: a Finished record without a result, and a failure's kind.
    let (lease, session) = acquire(&repository, &request("unencodable", fingerprint)).await;
    let done = repository
        .complete(session, id("unencodable"), lease, None)
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
    let record = get("unencodable").await.unwrap().unwrap();
    assert_eq!((record.status, record.result), (Status::Finished, None));
    let (lease, session) = acquire(&repository, &request("timed-out", fingerprint)).await;
    let failure = Failure::new(FailureKind::TimedOut, "slow");
    let done = repository
        .fail(session, id("timed-out"), lease, failure)
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
    let record = get("timed-out").await.unwrap().unwrap();
    assert_eq!(record.failure, Some(FailureKind::TimedOut));
    assert_eq!(record.error.as_deref(), Some("slow"));
}

/// Records written by the versions that stored one hash per record (a rolling upgrade leaves
/// them behind) still replay, are taken over, forgotten, counted and timed out; a record taken
/// over is written in the string layout from then on.
#[tokio::test]
async fn records_of_the_hash_layout_still_work() {
    let repository = repository().await;
    let mut redis = connect(&redis_url().await).await;
    let fingerprint = Fingerprint::of("body");
    let now = micros(Utc::now());
    let us = |at: DateTime<Utc>| at.timestamp_micros().to_string().into_bytes();
    let expiration = now + TimeDelta::hours(1);
    // The fields the earlier versions wrote, and their TTL.
    let write = |key: &'static str, status: &str, extra: Vec<(&'static str, Vec<u8>)>| {
        let name = repository.record_key(TARGET, key);
        let mut fields: Vec<(&'static str, Vec<u8>)> = vec![
            ("status", status.as_bytes().to_vec()),
            ("fp", fingerprint.as_bytes().to_vec()),
            ("ref", us(now - TimeDelta::minutes(5))),
            ("start", us(now - TimeDelta::minutes(5))),
            ("att", b"2".to_vec()),
            ("errs", b"1".to_vec()),
            ("tok", b"1700000000000000".to_vec()),
            ("exp", us(expiration)),
        ];
        fields.extend(extra);
        (name, fields)
    };
    let records = [
        write(
            "finished",
            "finished",
            vec![
                ("res", b"\"paid\"".to_vec()),
                ("fin", us(now - TimeDelta::minutes(4))),
            ],
        ),
        write(
            "stale",
            "running",
            vec![("timeout", us(now - TimeDelta::seconds(1)))],
        ),
        write(
            "held",
            "running",
            vec![("timeout", us(now + TimeDelta::minutes(10)))],
        ),
        write(
            "failed",
            "failed",
            vec![
                ("err", b"card declined".to_vec()),
                ("fail", b"error".to_vec()),
            ],
        ),
        write(
            "timed-out",
            "running",
            vec![("timeout", us(now - TimeDelta::seconds(1)))],
        ),
    ];
    for (name, fields) in &records {
        let _: () = redis.hset_multiple(name, fields).await.unwrap();
        let _: () = redis
            .pexpire_at(name, (expiration + TimeDelta::hours(1)).timestamp_millis())
            .await
            .unwrap();
    }

    // A Finished record replays through the manager, and reads back whole.
    let manager: Manager<&str, String, RedisSession> = Manager::new(repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let op = |key: &'static str| counted(&runs, key);
    let replayed = manager.run(op("finished")).await.unwrap();
    assert!(replayed.is_replayed());
    assert_eq!(replayed.into_inner(), "paid");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let finished = repository.get(TARGET, "finished").await.unwrap().unwrap();
    assert_eq!(finished.status, Status::Finished);
    assert_eq!(finished.expiration, Some(expiration));

    // Running within its timeout: in flight, nothing changed.
    match repository
        .claim(&request("held", fingerprint))
        .await
        .unwrap()
    {
        Claim::Existing { record, .. } => {
            assert_eq!((record.status, record.attempt), (Status::Running, 2));
        }
        Claim::Acquired { .. } => panic!("a held record was taken over"),
    }

    // Running past its timeout: taken over (attempt 3), finished in the string layout, with
    // the reference time, expiration and failed attempts it had.
    let (lease, session, previous) = take_over(&repository, &request("stale", fingerprint)).await;
    assert_eq!((lease.attempt, previous), (3, Some(Status::Running)));
    let name = repository.record_key(TARGET, "stale");
    let kind: String = redis::cmd("TYPE")
        .arg(&name)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(kind, "string");
    let done = repository
        .complete(session, id("stale"), lease, Some(b"\"late\""))
        .await
        .unwrap();
    assert_eq!(done, Completion::Done);
    let stale = repository.get(TARGET, "stale").await.unwrap().unwrap();
    assert_eq!(stale.status, Status::Finished);
    assert_eq!(stale.result.as_deref(), Some(&b"\"late\""[..]));
    assert_eq!(stale.reference_time, now - TimeDelta::minutes(5));
    assert_eq!(stale.expiration, Some(expiration));
    assert_eq!((stale.attempt, stale.error_count), (3, 1));

    // Failed: retried, and a second failure counts on top of the first.
    let (lease, session, previous) = take_over(&repository, &request("failed", fingerprint)).await;
    assert_eq!((lease.attempt, previous), (3, Some(Status::Failed)));
    repository
        .fail(session, id("failed"), lease, failure("declined again"))
        .await
        .unwrap();
    let failed = repository.get(TARGET, "failed").await.unwrap().unwrap();
    assert_eq!(failed.error.as_deref(), Some("declined again"));
    assert_eq!(failed.error_count, 2);

    // A payload that differs: the record as it stands, not taken over.
    assert!(matches!(
        repository
            .claim(&request("timed-out", Fingerprint::of("other")))
            .await
            .unwrap(),
        Claim::Existing { .. }
    ));

    // Counted with the records of the string layout; the timed-out one is failed in place,
    // still a hash that the earlier versions read.
    use ana_core::{Forgotten, Maintenance};
    let stats = repository.stats().await.unwrap();
    assert_eq!(
        (stats.running, stats.finished, stats.failed, stats.timed_out),
        (2, 2, 1, 1)
    );
    let cleaned = repository.cleanup(10).await.unwrap();
    assert_eq!(cleaned.failed, 1);
    let name = repository.record_key(TARGET, "timed-out");
    let status: String = redis.hget(&name, "status").await.unwrap();
    assert_eq!(status, "failed");
    let timed_out = repository.get(TARGET, "timed-out").await.unwrap().unwrap();
    assert_eq!(timed_out.failure, Some(FailureKind::TimedOut));

    // Forgotten: a held one only with force, a finished one at once.
    assert!(matches!(
        repository.forget(id("held"), false).await.unwrap(),
        Forgotten::Held { timeout: Some(_) }
    ));
    assert_eq!(
        repository.forget(id("held"), true).await.unwrap(),
        Forgotten::Deleted
    );
    assert_eq!(
        repository.forget(id("finished"), false).await.unwrap(),
        Forgotten::Deleted
    );
    assert_eq!(repository.get(TARGET, "finished").await.unwrap(), None);
}
