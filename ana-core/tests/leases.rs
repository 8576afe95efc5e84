//! Lease renewal, on Tokio's paused clock: the memory store reads the same virtual time, so a
//! handler "taking" seconds takes none.
#![allow(clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::{
    Claim, ClaimRequest, Clock, Completion, Error, Failure, IdempotencyRepository, Lease, Manager,
    MemoryRepository, MemorySession, Outcome, RecordId, Renewal, RepositoryError, TrackedOperation,
    operation,
};
use tokio::time::{Instant, sleep};

/// The time of Tokio's clock (paused in these tests), as a wall clock.
#[derive(Clone, Debug)]
struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl TokioClock {
    fn new() -> Self {
        Self {
            base: Utc::now(),
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = ana_core::chrono::TimeDelta::from_std(self.start.elapsed());
        self.base + elapsed.unwrap_or_default()
    }
}

const TIMEOUT: Duration = Duration::from_secs(1);

type TestManager = Manager<&'static str, String, MemorySession>;

fn manager(max_lease: Duration) -> TestManager {
    let clock = TokioClock::new();
    let store = MemoryRepository::new().with_clock(clock.clone());
    Manager::new(store)
        .with_clock(clock)
        .with_max_lease(max_lease)
}

/// A call of key `k` whose operation takes `takes`, holding the record `TIMEOUT` at a time.
fn slow(
    manager: &TestManager,
    takes: Duration,
) -> tokio::task::JoinHandle<Result<Outcome<String>, Error<std::io::Error>>> {
    let manager = manager.clone();
    tokio::spawn(async move {
        let op = operation("report", "k", "q3", move |_: MemorySession| async move {
            sleep(takes).await;
            Ok::<_, std::io::Error>("slow".to_owned())
        });
        manager.run(op.timeout(TIMEOUT)).await
    })
}

async fn duplicate(manager: &TestManager) -> Result<Outcome<String>, Error<std::io::Error>> {
    let op = operation("report", "k", "q3", |_: MemorySession| async {
        Ok::<_, std::io::Error>("duplicate".to_owned())
    });
    manager.run(op.timeout(TIMEOUT)).await
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_three_times_slower_than_its_timeout_is_not_taken_over() {
    let manager = manager(Duration::from_secs(60));
    let holder = slow(&manager, 3 * TIMEOUT);
    // Checked at 1.5 s and 2.5 s, past the claim's own timeout, each time still held.
    sleep(Duration::from_millis(1500)).await;
    for _ in 0..2 {
        let out = duplicate(&manager).await;
        assert!(matches!(out, Err(Error::StillRunning { .. })), "{out:?}");
        sleep(TIMEOUT).await;
    }
    let out = holder.await.map_err(|error| error.to_string());
    assert!(
        matches!(&out, Ok(Ok(Outcome::Executed(value))) if value == "slow"),
        "{out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_past_the_ceiling_is_taken_over() {
    let manager = manager(2 * TIMEOUT);
    let holder = slow(&manager, 5 * TIMEOUT);
    sleep(Duration::from_millis(1500)).await;
    let out = duplicate(&manager).await;
    assert!(matches!(out, Err(Error::StillRunning { .. })), "{out:?}");
    // The lease ends at the ceiling, 2 s after the claim.
    sleep(Duration::from_millis(1000)).await;
    let out = duplicate(&manager).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(value)) if value == "duplicate"),
        "{out:?}"
    );
    let out = holder.await.map_err(|error| error.to_string());
    assert!(matches!(out, Ok(Err(Error::Superseded { .. }))), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn without_a_maximum_lease_nothing_is_renewed() {
    let clock = TokioClock::new();
    let store = MemoryRepository::new().with_clock(clock.clone());
    let manager: TestManager = Manager::new(store).with_clock(clock);
    let holder = slow(&manager, 3 * TIMEOUT);
    sleep(Duration::from_millis(1500)).await;
    let out = duplicate(&manager).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(value)) if value == "duplicate"),
        "{out:?}"
    );
    let out = holder.await.map_err(|error| error.to_string());
    assert!(matches!(out, Ok(Err(Error::Superseded { .. }))), "{out:?}");
}

/// A memory store counting the renewals it is asked for.
#[derive(Clone, Debug)]
struct Renewals {
    inner: MemoryRepository,
    asked: Arc<AtomicUsize>,
}

impl IdempotencyRepository for Renewals {
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

    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(id, lease, lease_for).await
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        self.inner.get(target, key).await
    }
}

#[tokio::test(start_paused = true)]
async fn renewals_come_every_third_of_the_timeout_and_stop_with_the_call() {
    let clock = TokioClock::new();
    let asked = Arc::new(AtomicUsize::new(0));
    let store = Renewals {
        inner: MemoryRepository::new().with_clock(clock.clone()),
        asked: Arc::clone(&asked),
    };
    let manager: TestManager = Manager::new(store)
        .with_clock(clock)
        .with_max_lease(Duration::from_secs(60));
    let holder = slow(&manager, 10 * TIMEOUT);
    // Renewals at 1/3, 2/3, 3/3 and 4/3 of the timeout.
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    holder.abort();
    let _ = holder.await;
    manager.flush().await;
    sleep(3 * TIMEOUT).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        4,
        "renewed after the call was dropped"
    );
}
