//! `Manager::with_replay_cache`: which replays the cache answers without asking the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{
    Claim, ClaimRequest, Clock, Completion, Error, Failure, IdempotencyRepository, Lease, Manager,
    ManualClock, MemoryRepository, MemorySession, Outcome, Payload, RecordId, ReplayCache,
    RepositoryError, Status, TrackedOperation, operation,
};

/// The memory store, counting the claims that reach it.
#[derive(Clone)]
struct Counting {
    inner: MemoryRepository,
    claims: Arc<AtomicUsize>,
}

impl Counting {
    fn claims(&self) -> usize {
        self.claims.load(Ordering::SeqCst)
    }
}

impl IdempotencyRepository for Counting {
    type Session = MemorySession;

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<MemorySession>, RepositoryError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(request).await
    }

    async fn complete(
        &self,
        session: MemorySession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        self.inner.complete(session, id, lease, result).await
    }

    async fn fail(
        &self,
        session: MemorySession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        self.inner.fail(session, id, lease, failure).await
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        self.inner.get(target, key).await
    }
}

type TestManager = Manager<&'static str, String, MemorySession>;

fn setup() -> (TestManager, Counting, ReplayCache, ManualClock) {
    let clock = ManualClock::default();
    let store = Counting {
        inner: MemoryRepository::new().with_clock(clock.clone()),
        claims: Arc::default(),
    };
    // Longer than the calls' expiration (an hour), which then bounds the entries.
    let cache = ReplayCache::new(1 << 20).with_ttl(Duration::from_secs(7200));
    let manager = Manager::new(store.clone())
        .with_clock(clock.clone())
        .with_replay_cache(cache.clone());
    (manager, store, cache, clock)
}

/// A record of `[POST]/pay` / `k` for "100 EUR" in `status`, as another process left it.
fn stored(status: Status, clock: &ManualClock) -> TrackedOperation {
    TrackedOperation::new(
        "[POST]/pay",
        "k",
        status,
        "100 EUR".fingerprint(),
        clock.now(),
    )
}

async fn call(
    manager: &TestManager,
    key: &str,
    payload: &'static str,
    result: &'static str,
) -> Result<Outcome<String>, Error<std::io::Error>> {
    let op = operation(
        "[POST]/pay",
        key,
        payload,
        move |_ctx: MemorySession| async move { Ok::<_, std::io::Error>(result.to_owned()) },
    )
    .expiration(Duration::from_secs(3600));
    manager.run(op).await
}

#[tokio::test]
async fn replays_of_a_recorded_result_do_not_reach_the_store() {
    let (manager, store, cache, _) = setup();
    let first = call(&manager, "k", "100 EUR", "paid").await;
    assert_eq!(first.ok(), Some(Outcome::Executed("paid".into())));
    for _ in 0..3 {
        let again = call(&manager, "k", "100 EUR", "paid twice").await;
        assert_eq!(again.ok(), Some(Outcome::Replayed("paid".into())));
    }
    assert_eq!(store.claims(), 1);
    assert_eq!(cache.hits(), 3);
}

#[tokio::test]
async fn a_cached_key_reused_with_another_payload_is_a_mismatch() {
    let (manager, store, cache, _) = setup();
    call(&manager, "k", "100 EUR", "paid").await.ok();
    let other = call(&manager, "k", "999 EUR", "paid").await;
    assert!(
        matches!(other, Err(Error::PayloadMismatch { .. })),
        "{other:?}"
    );
    assert_eq!((store.claims(), cache.hits()), (1, 1));
}

#[tokio::test]
async fn a_finished_record_read_from_the_store_is_cached() {
    let (manager, store, cache, clock) = setup();
    // Recorded by another process: only the store knows it.
    let mut record = stored(Status::Finished, &clock);
    record.result = Some(br#""paid elsewhere""#.to_vec());
    record.attempt = 1;
    store.inner.restore(record);
    for _ in 0..3 {
        let again = call(&manager, "k", "100 EUR", "paid here").await;
        assert_eq!(again.ok(), Some(Outcome::Replayed("paid elsewhere".into())));
    }
    assert_eq!((store.claims(), cache.hits()), (1, 2));
}

#[tokio::test]
async fn an_entry_ends_with_its_record_expiration() {
    let (manager, store, cache, clock) = setup();
    call(&manager, "k", "100 EUR", "paid").await.ok();
    clock.advance(Duration::from_secs(3599));
    assert!(
        call(&manager, "k", "100 EUR", "x")
            .await
            .is_ok_and(|o| o.is_replayed())
    );
    assert_eq!((store.claims(), cache.hits()), (1, 1));
    // Past the record's expiration only the store answers: the memory store has forgotten
    // the record by then (a later call may run again), and the cache must not say otherwise.
    clock.advance(Duration::from_secs(2));
    let op = operation("[POST]/pay", "k", "100 EUR", |_ctx: MemorySession| async {
        Ok::<_, std::io::Error>("x".to_owned())
    })
    .reference_time(clock.now());
    assert_eq!(manager.call(op).await.ok(), Some("x".into()));
    assert_eq!((store.claims(), cache.hits()), (2, 1));
}

#[tokio::test]
async fn results_of_taken_over_records_are_cached_only_once_read_back() {
    let (manager, store, cache, clock) = setup();
    let mut failed = stored(Status::Failed, &clock);
    failed.attempt = 1;
    failed.error_count = 1;
    store.inner.restore(failed);
    // Attempt 2: the stored expiration is the first call's, unknown here; not cached.
    let run = call(&manager, "k", "100 EUR", "paid").await;
    assert_eq!(run.ok(), Some(Outcome::Executed("paid".into())));
    assert!(cache.is_empty());
    for _ in 0..2 {
        assert!(
            call(&manager, "k", "100 EUR", "x")
                .await
                .is_ok_and(|o| o.is_replayed())
        );
    }
    assert_eq!((store.claims(), cache.hits()), (2, 1));
}

#[tokio::test]
async fn failures_and_running_records_are_never_cached() {
    let (manager, store, cache, _) = setup();
    let op = operation("[POST]/pay", "k", "100 EUR", |_ctx: MemorySession| async {
        Err::<String, _>(std::io::Error::other("card declined"))
    });
    assert!(matches!(manager.run(op).await, Err(Error::Operation(_))));
    assert!(cache.is_empty());
    let retry = call(&manager, "k", "100 EUR", "paid").await;
    assert_eq!(retry.ok(), Some(Outcome::Executed("paid".into())));
    assert_eq!((store.claims(), cache.hits()), (2, 0));
}
