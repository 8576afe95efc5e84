//! Finishes tried again after a transient store error, and the floor under timeouts.

// Test code: a failed expectation is a panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ana_core::{
    CallOutcome, Claim, ClaimRequest, Completion, Error, EventKind, Failure, FinishRetry,
    IdempotencyRepository, Lease, Manager, MemoryRepository, MemorySession, RecordId,
    RepositoryError, Status, TrackedOperation, operation,
};

/// Where a failing finish fails: before the store applied it, or after (its answer lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    Request,
    Answer,
}

/// A memory store whose next `failing` finishes (complete or fail) answer a transient error.
#[derive(Clone)]
struct Flaky {
    inner: MemoryRepository,
    failing: Arc<AtomicU32>,
    lost: Lost,
    finishes: Arc<AtomicU32>,
}

impl Flaky {
    fn new(failing: u32, lost: Lost) -> Self {
        Self {
            inner: MemoryRepository::new(),
            failing: Arc::new(AtomicU32::new(failing)),
            lost,
            finishes: Arc::default(),
        }
    }

    /// Whether this finish fails (and counts it).
    fn fails(&self) -> bool {
        self.finishes.fetch_add(1, Ordering::SeqCst);
        self.failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn finish(
        &self,
        applied: impl Future<Output = Result<Completion, RepositoryError>>,
    ) -> Result<Completion, RepositoryError> {
        if !self.fails() {
            return applied.await;
        }
        if self.lost == Lost::Answer {
            applied.await?;
        }
        Err(RepositoryError::Unavailable("connection reset".into()))
    }
}

impl IdempotencyRepository for Flaky {
    type Session = MemorySession;

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<MemorySession>, RepositoryError> {
        self.inner.claim(request).await
    }

    async fn complete(
        &self,
        session: MemorySession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        self.finish(self.inner.complete(session, id, lease, result))
            .await
    }

    async fn fail(
        &self,
        session: MemorySession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        self.finish(self.inner.fail(session, id, lease, failure))
            .await
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        self.inner.get(target, key).await
    }
}

type Seen = Arc<Mutex<Vec<(EventKind, u32)>>>;

fn manager(store: &Flaky) -> (Manager<&'static str, String, MemorySession>, Seen) {
    let seen = Seen::default();
    let log = Arc::clone(&seen);
    let manager = Manager::new(store.clone())
        .on_event(move |event| log.lock().unwrap().push((event.kind, event.finish_retries)));
    (manager, seen)
}

async fn charge(
    manager: &Manager<&'static str, String, MemorySession>,
    runs: &Arc<AtomicUsize>,
    succeed: bool,
) -> Result<String, Error<String>> {
    let runs = Arc::clone(runs);
    let op = operation(
        "charge",
        "k",
        "10 EUR",
        move |_: MemorySession| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if succeed {
                Ok("charged".to_owned())
            } else {
                Err("declined".to_owned())
            }
        },
    )
    .timeout(Duration::from_secs(30));
    manager.call(op).await
}

async fn record(store: &Flaky) -> TrackedOperation {
    store.get("charge", "k").await.unwrap().expect("the record")
}

#[tokio::test(start_paused = true)]
async fn a_complete_lost_in_transit_is_tried_again() {
    let store = Flaky::new(2, Lost::Request);
    let (manager, seen) = manager(&store);
    let runs = Arc::default();
    assert_eq!(charge(&manager, &runs, true).await.unwrap(), "charged");
    assert_eq!(store.finishes.load(Ordering::SeqCst), 3);
    assert_eq!(record(&store).await.status, Status::Finished);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(EventKind::Outcome(CallOutcome::Executed), 2)]);
    // The retry's answer is the call's: a replay now, the work done once.
    assert_eq!(charge(&manager, &runs, true).await.unwrap(), "charged");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The first complete was applied and its answer lost: the try again finds the record this
/// attempt finished, which is a success, not a superseded attempt.
#[tokio::test(start_paused = true)]
async fn a_complete_whose_answer_was_lost_is_a_success() {
    let store = Flaky::new(1, Lost::Answer);
    let (manager, seen) = manager(&store);
    let runs = Arc::default();
    assert_eq!(charge(&manager, &runs, true).await.unwrap(), "charged");
    assert_eq!(store.finishes.load(Ordering::SeqCst), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(EventKind::Outcome(CallOutcome::Executed), 1)]);
    let record = record(&store).await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));
}

#[tokio::test(start_paused = true)]
async fn a_fail_is_tried_again_too() {
    let store = Flaky::new(1, Lost::Request);
    let (manager, seen) = manager(&store);
    let runs = Arc::default();
    let out = charge(&manager, &runs, false).await;
    assert!(
        matches!(out, Err(Error::Operation(ref e)) if e == "declined"),
        "{out:?}"
    );
    let record = record(&store).await;
    assert_eq!((record.status, record.error_count), (Status::Failed, 1));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(EventKind::Outcome(CallOutcome::Failed), 1)]);
}

/// A store down for longer than the tries: the call answers the store's error (a 503 over
/// HTTP), after the bounded number of tries.
#[tokio::test(start_paused = true)]
async fn the_tries_are_bounded() {
    let store = Flaky::new(100, Lost::Request);
    let (manager, seen) = manager(&store);
    let manager = manager.with_finish_retry(FinishRetry::default().tries(3));
    let runs = Arc::default();
    let out = charge(&manager, &runs, true).await;
    assert!(
        matches!(out, Err(Error::Repository(RepositoryError::Unavailable(_)))),
        "{out:?}"
    );
    // Three tries of the complete, then the cancelled attempt's clean-up (which fails too).
    manager.flush().await;
    assert_eq!(store.finishes.load(Ordering::SeqCst), 4);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(EventKind::Outcome(CallOutcome::StoreUnavailable), 2)]
    );
    let manager = manager.with_finish_retry(FinishRetry::NEVER);
    store.failing.store(1, Ordering::SeqCst);
    store.finishes.store(0, Ordering::SeqCst);
    let other = operation("charge", "k2", "1", |_: MemorySession| async {
        Ok::<_, String>("x".to_owned())
    });
    assert!(manager.call(other).await.is_err());
    assert_eq!(store.finishes.load(Ordering::SeqCst), 1);
}

/// A timeout below the manager's floor is refused before the store is touched; without a
/// timeout, or with the floor lowered, the call runs.
#[tokio::test]
async fn a_timeout_below_the_minimum_is_refused() {
    let store = Flaky::new(0, Lost::Request);
    let (manager, seen) = manager(&store);
    let runs = Arc::new(AtomicUsize::new(0));
    let op = |timeout: Duration| {
        let runs = Arc::clone(&runs);
        operation(
            "charge",
            "k",
            "10 EUR",
            move |_: MemorySession| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>("charged".to_owned())
            },
        )
        .timeout(timeout)
    };
    let out = manager.call(op(Duration::from_nanos(1))).await;
    match out {
        Err(Error::TimeoutTooShort { timeout, min, .. }) => {
            assert_eq!(
                (timeout, min),
                (Duration::from_nanos(1), Duration::from_secs(1))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(store.get("charge", "k").await.unwrap().is_none());
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(EventKind::Outcome(CallOutcome::Refused), 0)]
    );
    let out = manager.call(op(Duration::from_millis(999))).await;
    assert!(matches!(out, Err(Error::TimeoutTooShort { .. })), "{out:?}");
    manager.call(op(Duration::from_secs(1))).await.unwrap();
    let lowered = manager.with_min_timeout(Some(Duration::from_millis(10)));
    let other = operation("charge", "k2", "1", |_: MemorySession| async {
        Ok::<_, String>("x".to_owned())
    })
    .timeout(Duration::from_millis(10));
    lowered.call(other).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
