//! The store conformance suite: every [`IdempotencyRepository`] must pass it.
//!
//! A store crate implements [`Harness`] for a fresh, isolated instance of its store and adds
//! one line to a test file; each case becomes a `#[tokio::test]` (the crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features as a dev-dependency):
//!
//! ```no_run
//! // tests/conformance.rs of a store crate; here, the memory store's own harness.
//! async fn harness() -> ana_core::conformance::MemoryHarness {
//!     ana_core::conformance::MemoryHarness::new()
//! }
//!
//! ana_core::conformance_tests!(harness());
//! # fn main() {}
//! ```
//!
//! where `harness()` is an `async fn` returning a fresh, isolated harness. The suite covers
//! replays, expiry before storage, Running with a future or no timeout, runnable states,
//! unwrapped errors, panics, exactly-once close, concurrency, fencing, payload mismatch,
//! cancellation, calls waiting on a holder (woken by the store's [`Watch`](crate::Watch) or by
//! polling) and lease renewal fenced by the claim.
//!
//! A store that implements [`Maintenance`] adds `ana_core::maintenance_tests!(harness());`
//! for its cases: inspecting one record, forgetting one (refused while held unless forced),
//! counting records by status and cleaning up.

// Test code: a failed expectation is a panic.
#![allow(clippy::panic)]

mod waiting;
pub use waiting::{
    a_wait_that_runs_out_is_still_running, renewal_is_fenced_by_the_claim,
    waiters_replay_the_holders_answer, waiters_take_over_a_crashed_holder,
};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Barrier, mpsc, oneshot};

use crate::cache::ReplayCache;
use crate::clock::{Clock, ManualClock};
use crate::codec::{Codec, JsonCodec};
use crate::error::Error;
use crate::maintenance::{Forgotten, Maintenance, Stats};
use crate::manager::{Manager, Outcome};
use crate::memory::MemoryRepository;
use crate::observe::{CallOutcome, EventKind};
use crate::operation::{FnOperation, operation};
use crate::record::{FailureKind, Payload, Status, TrackedOperation};
use crate::repository::{
    BoxError, Claim, ClaimRequest, Completion, IdempotencyRepository, RecordId,
};

/// An isolated instance of a store under test, with control over its time.
pub trait Harness: Send + Sync + Sized + 'static {
    /// The store.
    type Repository: IdempotencyRepository + Clone;

    /// A handle to the store; every handle of one harness sees the same records, and no other
    /// harness's.
    fn repository(&self) -> Self::Repository;

    /// The clock the suite's managers use. It starts at (about) the store's current time.
    fn clock(&self) -> ManualClock;

    /// Makes `by` pass for the store's deadlines: the memory store's clock moves with
    /// [`clock`](Self::clock) and does nothing here; a store on a server clock shifts every
    /// stored time of this harness's records back by `by`. The suite advances the manager's
    /// clock itself.
    fn advance_store(&self, by: Duration) -> impl Future<Output = ()> + Send;

    /// Stores `record` exactly as given, replacing any record with its identity. Records the
    /// suite seeds or creates must stay in the store until the case ends, expired or not: a
    /// store that deletes expired records defers that past the case (a sweep interval, a
    /// retention period).
    fn seed(&self, record: TrackedOperation) -> impl Future<Output = ()> + Send;

    /// The replay cache the suite's managers share, to check the store behind one (default:
    /// none). [`Cached`] gives a harness one.
    fn replay_cache(&self) -> Option<ReplayCache> {
        None
    }
}

/// A harness whose managers share a [`ReplayCache`]: the whole suite holds with one in front
/// of the store.
///
/// ```no_run
/// async fn harness() -> ana_core::conformance::Cached<ana_core::conformance::MemoryHarness> {
///     ana_core::conformance::Cached::new(ana_core::conformance::MemoryHarness::new())
/// }
///
/// ana_core::conformance_tests!(harness());
/// # fn main() {}
/// ```
#[derive(Clone, Debug)]
pub struct Cached<H> {
    inner: H,
    cache: ReplayCache,
}

impl<H: Harness> Cached<H> {
    /// `inner` behind a fresh cache of 1 MiB.
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            cache: ReplayCache::new(1 << 20),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &ReplayCache {
        &self.cache
    }
}

impl<H: Harness> Harness for Cached<H> {
    type Repository = H::Repository;

    fn repository(&self) -> Self::Repository {
        self.inner.repository()
    }

    fn clock(&self) -> ManualClock {
        self.inner.clock()
    }

    fn advance_store(&self, by: Duration) -> impl Future<Output = ()> + Send {
        self.inner.advance_store(by)
    }

    fn seed(&self, record: TrackedOperation) -> impl Future<Output = ()> + Send {
        self.inner.seed(record)
    }

    fn replay_cache(&self) -> Option<ReplayCache> {
        Some(self.cache.clone())
    }
}

/// A harness whose store is wrapped in [`Encrypted`](crate::encryption::Encrypted) (feature
/// `encryption`): the whole suite holds with results sealed at rest.
///
/// ```no_run
/// use ana_core::conformance::{Encrypting, MemoryHarness};
///
/// async fn harness() -> Encrypting<MemoryHarness> {
///     Encrypting::new(MemoryHarness::new())
/// }
///
/// ana_core::conformance_tests!(harness());
/// # fn main() {}
/// ```
#[cfg(feature = "encryption")]
#[derive(Clone, Debug)]
pub struct Encrypting<H> {
    inner: H,
    keyring: Arc<crate::encryption::Keyring>,
}

#[cfg(feature = "encryption")]
impl<H: Harness> Encrypting<H> {
    /// `inner` under a keyring of one fixed test key (id 0).
    pub fn new(inner: H) -> Self {
        let key = crate::encryption::EncryptionKey::new(0, &[0x5a; 32]);
        Self::with_keyring(inner, crate::encryption::Keyring::new(key))
    }

    /// `inner` under `keyring`.
    pub fn with_keyring(inner: H, keyring: crate::encryption::Keyring) -> Self {
        Self {
            inner,
            keyring: Arc::new(keyring),
        }
    }

    /// The harness around the store itself (which sees sealed results).
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

#[cfg(feature = "encryption")]
impl<H: Harness> Harness for Encrypting<H> {
    type Repository = crate::encryption::Encrypted<H::Repository>;

    fn repository(&self) -> Self::Repository {
        crate::encryption::Encrypted::new(self.inner.repository(), Arc::clone(&self.keyring))
    }

    fn clock(&self) -> ManualClock {
        self.inner.clock()
    }

    fn advance_store(&self, by: Duration) -> impl Future<Output = ()> + Send {
        self.inner.advance_store(by)
    }

    /// Seeds `record` with its result (if any) sealed, as the decorator would have stored it.
    fn seed(&self, mut record: TrackedOperation) -> impl Future<Output = ()> + Send {
        if let Some(result) = &record.result {
            let id = crate::repository::RecordId::new(&record.target, &record.key);
            record.result = self.keyring.encrypt(id, result).ok();
        }
        self.inner.seed(record)
    }

    fn replay_cache(&self) -> Option<ReplayCache> {
        self.inner.replay_cache()
    }
}

/// A [`Harness`] over a fresh [`MemoryRepository`] on a [`ManualClock`].
#[derive(Clone, Debug)]
pub struct MemoryHarness {
    repository: MemoryRepository,
    clock: ManualClock,
}

impl MemoryHarness {
    /// A fresh store. Its sweep interval is a day, so expired records stay in place for the
    /// cases that look at them (eviction has tests of its own).
    pub fn new() -> Self {
        let clock = ManualClock::default();
        Self {
            repository: MemoryRepository::new()
                .with_clock(clock.clone())
                .with_sweep_interval(Duration::from_secs(24 * 3600)),
            clock,
        }
    }
}

impl Default for MemoryHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for MemoryHarness {
    type Repository = MemoryRepository;

    fn repository(&self) -> MemoryRepository {
        self.repository.clone()
    }

    fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    async fn advance_store(&self, _by: Duration) {}

    async fn seed(&self, record: TrackedOperation) {
        self.repository.restore(record);
    }
}

/// Generates one `#[tokio::test]` per conformance case, each on a fresh harness from
/// `$harness` (an expression giving a future of a [`Harness`]).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            first_call_executes_and_records,
            finished_replays_without_running,
            finished_replays_even_when_expired,
            expired_before_storage_is_touched,
            expired_record_does_not_run,
            running_with_future_timeout_is_still_running,
            running_without_timeout_is_still_running,
            ready_record_executes,
            failed_record_executes,
            timed_out_running_executes,
            takeovers_are_reported,
            operation_error_passes_unwrapped,
            panic_becomes_panic_error,
            panic_before_the_future_becomes_panic_error,
            failed_is_retried_and_counts_errors,
            concurrent_calls_execute_once,
            payload_mismatch_is_detected_first,
            takeover_after_timeout_supersedes_stale_holder,
            recreated_record_rejects_the_earlier_holder,
            a_complete_tried_again_is_done,
            unencodable_result_is_recorded_and_never_runs_again,
            expiry_during_execution_returns_expired,
            cancellation_frees_the_record,
            targets_scope_keys,
            waiters_replay_the_holders_answer,
            a_wait_that_runs_out_is_still_running,
            waiters_take_over_a_crashed_holder,
            renewal_is_fenced_by_the_claim,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case($harness.await).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`Maintenance`] case (inspect, forget, stats, clean-up),
/// each on a fresh harness from `$harness`, for a store whose repository implements
/// [`Maintenance`]. A store without it runs [`conformance_tests!`](crate::conformance_tests)
/// alone.
///
/// ```no_run
/// async fn harness() -> ana_core::conformance::MemoryHarness {
///     ana_core::conformance::MemoryHarness::new()
/// }
///
/// ana_core::conformance_tests!(harness());
/// ana_core::maintenance_tests!(harness());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! maintenance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            inspect_reads_one_record,
            forgetting_a_finished_record_lets_its_key_run_again,
            forgetting_a_held_record_is_refused_unless_forced,
            forgetting_a_timed_out_record_needs_no_force,
            forgetting_an_absent_record_is_not_found,
            stats_count_records_by_status,
            cleanup_fails_timed_out_records_and_deletes_expired_ones,
            cleanup_stops_at_its_limit,
        );
    };
}

const TARGET: &str = "[POST]/conformance";
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

type Session<H> = <<H as Harness>::Repository as IdempotencyRepository>::Session;
type TestManager<H> = Manager<&'static str, String, Session<H>>;

/// The operation error of the suite.
#[derive(Debug, PartialEq, Eq)]
pub struct Declined(pub String);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn manager<H: Harness>(harness: &H) -> TestManager<H> {
    let manager = Manager::new(harness.repository()).with_clock(harness.clock());
    match harness.replay_cache() {
        Some(cache) => manager.with_replay_cache(cache),
        None => manager,
    }
}

async fn advance<H: Harness>(harness: &H, by: Duration) {
    harness.clock().advance(by);
    harness.advance_store(by).await;
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(counter: &Arc<AtomicUsize>) -> usize {
    counter.load(Ordering::SeqCst)
}

type TestFuture = Pin<Box<dyn Future<Output = Result<String, Declined>> + Send>>;
type TestOperation<F> = FnOperation<&'static str, F>;

/// An operation that counts its runs and returns `result`.
fn counting<Ctx: Send>(
    runs: &Arc<AtomicUsize>,
    key: &str,
    payload: &'static str,
    result: &'static str,
) -> TestOperation<impl FnOnce(Ctx) -> TestFuture + Send + use<Ctx>> {
    let runs = Arc::clone(runs);
    operation(TARGET, key, payload, move |_ctx: Ctx| -> TestFuture {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(result.to_owned())
        })
    })
}

/// An operation that counts its runs, says it started, and finishes when told to.
fn gated<Ctx: Send>(
    runs: &Arc<AtomicUsize>,
    key: &str,
    result: &'static str,
    started: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
) -> TestOperation<impl FnOnce(Ctx) -> TestFuture + Send + use<Ctx>> {
    let runs = Arc::clone(runs);
    operation(TARGET, key, "payload", move |_ctx: Ctx| -> TestFuture {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = started.send(());
            let _ = release.await;
            Ok(result.to_owned())
        })
    })
}

async fn record<H: Harness>(harness: &H, key: &str) -> TrackedOperation {
    match harness.repository().get(TARGET, key).await {
        Ok(Some(record)) => record,
        Ok(None) => panic!("no record for {key}"),
        Err(error) => panic!("reading the record for {key} failed: {error:?}"),
    }
}

fn seeded(key: &str, status: Status, now: DateTime<Utc>) -> TrackedOperation {
    let mut record = TrackedOperation::new(TARGET, key, status, "payload".fingerprint(), now);
    record.started_at = Some(now);
    record.attempt = 1;
    record
}

fn executed(outcome: Result<Outcome<String>, Error<Declined>>) -> String {
    match outcome {
        Ok(Outcome::Executed(value)) => value,
        other => panic!("expected an execution, got {other:?}"),
    }
}

fn replayed(outcome: Result<Outcome<String>, Error<Declined>>) -> String {
    match outcome {
        Ok(Outcome::Replayed(value)) => value,
        other => panic!("expected a replay, got {other:?}"),
    }
}

/// A first call runs the operation and stores a Finished record with its result.
pub async fn first_call_executes_and_records<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let out = manager.run(counting(&runs, "k", "payload", "done")).await;
    assert_eq!(executed(out), "done");
    assert_eq!(count(&runs), 1);
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.attempt, 1);
    assert_eq!(record.error_count, 0);
    assert_eq!(record.fingerprint, "payload".fingerprint());
    assert_eq!(record.result.as_deref(), Some(&b"\"done\""[..]));
    assert!(record.finished_at.is_some() && record.started_at.is_some());
    assert_eq!(record.error, None);
    assert_eq!(record.failure, None);
}

/// Later calls replay the first result without running the operation (close is exactly-once).
pub async fn finished_replays_without_running<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "first")).await);
    for _ in 0..3 {
        let out = manager.run(counting(&runs, "k", "payload", "second")).await;
        assert_eq!(replayed(out), "first");
    }
    assert_eq!(count(&runs), 1);
}

/// A Finished record replays even after its own expiration.
pub async fn finished_replays_even_when_expired<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let op = counting(&runs, "k", "payload", "first").expiration(HOUR);
    executed(manager.run(op).await);
    advance(&harness, 2 * HOUR).await;
    assert!(record(&harness, "k").await.expiration.is_some());
    let again = counting(&runs, "k", "payload", "second").expiration(HOUR);
    assert_eq!(replayed(manager.run(again).await), "first");
    assert_eq!(count(&runs), 1);
}

/// A call past its own reference time plus expiration is Expired before storage is touched.
pub async fn expired_before_storage_is_touched<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let op = counting(&runs, "k", "payload", "never")
        .reference_time(manager.now() - chrono::TimeDelta::hours(2))
        .expiration(HOUR);
    let out = manager.run(op).await;
    assert!(
        matches!(&out, Err(Error::Expired { target, key }) if target == TARGET && key == "k"),
        "{out:?}"
    );
    let message = out.err().map(|error| error.to_string());
    assert_eq!(
        message.as_deref(),
        Some("Operation [POST]/conformance expired for key k.")
    );
    assert_eq!(count(&runs), 0);
    assert_eq!(harness.repository().get(TARGET, "k").await.ok(), Some(None));
}

/// A stored record past its expiration does not run again, even when Failed.
pub async fn expired_record_does_not_run<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let now = harness.clock().now();
    let mut record = seeded("k", Status::Failed, now - chrono::TimeDelta::hours(3));
    record.expiration = Some(now - chrono::TimeDelta::hours(1));
    record.error = Some("earlier".into());
    harness.seed(record).await;
    let runs = counter();
    let out = manager.run(counting(&runs, "k", "payload", "never")).await;
    assert!(matches!(out, Err(Error::Expired { .. })), "{out:?}");
    assert_eq!(count(&runs), 0);
    assert_eq!(self::record(&harness, "k").await.status, Status::Failed);
}

/// A Running record whose timeout is ahead answers StillRunning with the time left.
pub async fn running_with_future_timeout_is_still_running<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let now = harness.clock().now();
    let mut record = seeded("k", Status::Running, now);
    record.timeout = Some(now + chrono::TimeDelta::hours(1));
    harness.seed(record).await;
    let runs = counter();
    let out = manager.run(counting(&runs, "k", "payload", "never")).await;
    match &out {
        Err(Error::StillRunning {
            retry_after: Some(left),
            ..
        }) => assert!(*left > HOUR - 5 * MINUTE && *left <= HOUR, "{left:?}"),
        other => panic!("expected StillRunning, got {other:?}"),
    }
    let message = out.err().map(|error| error.to_string());
    assert_eq!(
        message.as_deref(),
        Some("Operation [POST]/conformance still running for key k.")
    );
    assert_eq!(count(&runs), 0);
}

/// A Running record without a timeout answers StillRunning, with no time to wait.
pub async fn running_without_timeout_is_still_running<H: Harness>(harness: H) {
    let manager = manager(&harness);
    harness
        .seed(seeded("k", Status::Running, harness.clock().now()))
        .await;
    let runs = counter();
    let out = manager.run(counting(&runs, "k", "payload", "never")).await;
    assert!(
        matches!(
            out,
            Err(Error::StillRunning {
                retry_after: None,
                ..
            })
        ),
        "{out:?}"
    );
    assert_eq!(count(&runs), 0);
    assert_eq!(record(&harness, "k").await.status, Status::Running);
}

/// A Ready record runs.
pub async fn ready_record_executes<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let mut ready = seeded("k", Status::Ready, harness.clock().now());
    ready.attempt = 0;
    ready.started_at = None;
    harness.seed(ready).await;
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "done")).await);
    let record = record(&harness, "k").await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));
    assert_eq!(count(&runs), 1);
}

/// A Failed record runs again, with a new attempt; its error count is kept.
pub async fn failed_record_executes<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let mut failed = seeded("k", Status::Failed, harness.clock().now());
    failed.attempt = 3;
    failed.error_count = 2;
    failed.error = Some("earlier".into());
    harness.seed(failed).await;
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "done")).await);
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!((record.attempt, record.error_count), (4, 2));
    assert_eq!(record.error, None);
    assert_eq!(record.failure, None);
    assert_eq!(count(&runs), 1);
}

/// A claim tells the manager what it took over: a Running record past its holder's timeout
/// is reported as a takeover (then the call's outcome); a retry of a Failed record is not.
pub async fn takeovers_are_reported<H: Harness>(harness: H) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let manager = manager(&harness).on_event(move |event| {
        let mut events = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        events.push((event.kind, event.attempt));
    });
    let now = harness.clock().now();
    let mut running = seeded("held", Status::Running, now - chrono::TimeDelta::hours(1));
    running.timeout = Some(now - chrono::TimeDelta::minutes(30));
    harness.seed(running).await;
    harness.seed(seeded("failed", Status::Failed, now)).await;
    let runs = counter();
    executed(
        manager
            .run(counting(&runs, "held", "payload", "done"))
            .await,
    );
    executed(
        manager
            .run(counting(&runs, "failed", "payload", "done"))
            .await,
    );
    let events = events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let executed_outcome = EventKind::Outcome(CallOutcome::Executed);
    assert_eq!(
        events,
        [
            (EventKind::Takeover, Some(2)),
            (executed_outcome, Some(2)),
            (executed_outcome, Some(2)),
        ]
    );
}

/// A Running record past its timeout is taken over.
pub async fn timed_out_running_executes<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let now = harness.clock().now();
    let mut running = seeded("k", Status::Running, now - chrono::TimeDelta::hours(1));
    running.timeout = Some(now - chrono::TimeDelta::minutes(30));
    harness.seed(running).await;
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "done")).await);
    let record = record(&harness, "k").await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 2));
    assert_eq!(count(&runs), 1);
}

/// The operation's own error comes back unwrapped; the record is Failed with its message.
pub async fn operation_error_passes_unwrapped<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let op = operation(TARGET, "k", "payload", |_ctx: Session<H>| async {
        Err::<String, _>(Declined("card declined".into()))
    });
    let out = manager.run(op).await;
    assert!(
        matches!(&out, Err(Error::Operation(Declined(m))) if m == "card declined"),
        "{out:?}"
    );
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::Error));
    assert_eq!(record.error.as_deref(), Some("card declined"));
    assert_eq!(record.error_count, 1);
    assert_eq!(record.result, None);
}

/// A panic is caught and becomes `Error::Panic` with `Got panic "<value>"`.
pub async fn panic_becomes_panic_error<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let op = operation(TARGET, "k", "payload", |_ctx: Session<H>| async {
        if true {
            panic!("boom");
        }
        Ok::<String, Declined>(String::new())
    });
    let out = manager.run(op).await;
    assert_panicked(&harness, out, "Got panic \"boom\"").await;
}

/// A panic while the operation makes its future (before anything is polled) is caught the
/// same way.
pub async fn panic_before_the_future_becomes_panic_error<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let op = operation(
        TARGET,
        "k",
        "payload",
        |_ctx: Session<H>| -> std::future::Ready<Result<String, Declined>> {
            panic!("no future");
        },
    );
    let out = manager.run(op).await;
    assert_panicked(&harness, out, "Got panic \"no future\"").await;
}

/// `out` is `Error::Panic` with `expected`, and record `k` is Failed with it.
async fn assert_panicked<H: Harness, R: fmt::Debug>(
    harness: &H,
    out: Result<R, Error<Declined>>,
    expected: &str,
) {
    assert!(
        matches!(&out, Err(Error::Panic { message }) if message == expected),
        "{out:?}"
    );
    let record = record(harness, "k").await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::Panic));
    assert_eq!(record.error.as_deref(), Some(expected));
}

/// A Failed record is retried by the next call until one succeeds; failures are counted.
pub async fn failed_is_retried_and_counts_errors<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    for round in 0..3 {
        let runs = Arc::clone(&runs);
        let op = operation(TARGET, "k", "payload", move |_ctx: Session<H>| async move {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            if run < 2 {
                Err(Declined(format!("failure {run}")))
            } else {
                Ok("paid".to_owned())
            }
        });
        let out = manager.run(op).await;
        if round < 2 {
            assert!(matches!(out, Err(Error::Operation(_))), "{out:?}");
            let failed = record(&harness, "k").await;
            assert_eq!(failed.error_count, round + 1);
            assert_eq!(failed.failure, Some(FailureKind::Error));
        } else {
            assert_eq!(executed(out), "paid");
        }
    }
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!((record.attempt, record.error_count), (3, 2));
    assert_eq!(count(&runs), 3);
}

/// 64 concurrent calls on one key run the operation exactly once: the holder waits until the
/// 63 others have answered (StillRunning), then finishes.
pub async fn concurrent_calls_execute_once<H: Harness>(harness: H) {
    const CALLS: usize = 64;
    let manager = manager(&harness);
    let runs = counter();
    let barrier = Arc::new(Barrier::new(CALLS));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    for _ in 0..CALLS {
        let (manager, runs, barrier) = (manager.clone(), Arc::clone(&runs), Arc::clone(&barrier));
        let (mut release, results) = (release_rx.clone(), results_tx.clone());
        tokio::spawn(async move {
            let op = operation(TARGET, "k", "payload", move |_ctx: Session<H>| async move {
                // Only the first execution waits, so a double execution shows as a second
                // result instead of a hang.
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = release.wait_for(|released| *released).await;
                }
                Ok::<_, Declined>("once".to_owned())
            });
            barrier.wait().await;
            let _ = results.send(manager.run(op).await);
        });
    }
    drop(results_tx);
    let mut still_running = 0;
    for _ in 0..CALLS - 1 {
        match results_rx.recv().await {
            Some(Err(Error::StillRunning { .. })) => still_running += 1,
            other => panic!("expected StillRunning while the holder runs, got {other:?}"),
        }
    }
    let _ = release_tx.send(true);
    let last = results_rx.recv().await;
    assert!(matches!(last, Some(Ok(Outcome::Executed(_)))), "{last:?}");
    assert_eq!(still_running, CALLS - 1);
    assert_eq!(count(&runs), 1);
    let record = record(&harness, "k").await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));
    let replay = counting(&runs, "k", "payload", "again");
    assert_eq!(replayed(manager.run(replay).await), "once");
}

/// A key reused with another payload is PayloadMismatch, checked before a replay, a
/// StillRunning or a retry.
pub async fn payload_mismatch_is_detected_first<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    executed(manager.run(counting(&runs, "done", "payload", "a")).await);
    let out = manager.run(counting(&runs, "done", "other", "b")).await;
    assert!(
        matches!(&out, Err(Error::PayloadMismatch { key, .. }) if key == "done"),
        "{out:?}"
    );

    harness
        .seed(seeded("running", Status::Running, harness.clock().now()))
        .await;
    let out = manager.run(counting(&runs, "running", "other", "b")).await;
    assert!(matches!(out, Err(Error::PayloadMismatch { .. })), "{out:?}");

    harness
        .seed(seeded("failed", Status::Failed, harness.clock().now()))
        .await;
    let out = manager.run(counting(&runs, "failed", "other", "b")).await;
    assert!(matches!(out, Err(Error::PayloadMismatch { .. })), "{out:?}");
    let failed = record(&harness, "failed").await;
    assert_eq!((failed.status, failed.attempt), (Status::Failed, 1));
    assert_eq!(count(&runs), 1);
}

/// After the holder's timeout another call takes over with a new attempt; the stale holder's
/// finish is rejected as Superseded and the newer result stays.
pub async fn takeover_after_timeout_supersedes_stale_holder<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let stale = gated(&runs, "k", "stale", started_tx, release_rx).timeout(10 * MINUTE);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(stale).await }
    });
    let _ = started_rx.await;
    let early = manager
        .run(counting(&runs, "k", "payload", "early").timeout(10 * MINUTE))
        .await;
    assert!(
        matches!(early, Err(Error::StillRunning { .. })),
        "{early:?}"
    );

    advance(&harness, 11 * MINUTE).await;
    let fresh = counting(&runs, "k", "payload", "fresh").timeout(10 * MINUTE);
    assert_eq!(executed(manager.run(fresh).await), "fresh");
    assert_eq!(record(&harness, "k").await.attempt, 2);

    let _ = release_tx.send(());
    let stale = holder.await.map_err(|error| error.to_string());
    assert!(
        matches!(stale, Ok(Err(Error::Superseded { .. }))),
        "{stale:?}"
    );
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.result.as_deref(), Some(&b"\"fresh\""[..]));
    assert_eq!(count(&runs), 2);
}

/// A call of key `k` whose operation has started and returns `result` when told to.
async fn running<Ctx: Clone + Send + Sync + 'static>(
    manager: &Manager<&'static str, String, Ctx>,
    runs: &Arc<AtomicUsize>,
    result: &'static str,
) -> (
    tokio::task::JoinHandle<Result<Outcome<String>, Error<Declined>>>,
    oneshot::Sender<()>,
) {
    let (started, started_rx) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let op = gated(runs, "k", result, started, release_rx);
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    let _ = started_rx.await;
    (call, release)
}

/// A record created again under its identity while a holder still runs (deleted once expired
/// and claimed anew, restored from elsewhere) counts its attempts from 1 again: the earlier
/// holder's finish, with the same attempt number, must not land on the new holder's record.
pub async fn recreated_record_rejects_the_earlier_holder<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let (earlier, earlier_release) = running(&manager, &runs, "earlier").await;
    // The record as a store holds it once created again: Ready, no attempt yet.
    let mut recreated = seeded("k", Status::Ready, harness.clock().now());
    recreated.attempt = 0;
    recreated.started_at = None;
    harness.seed(recreated).await;
    let (later, later_release) = running(&manager, &runs, "later").await;
    let held = record(&harness, "k").await;
    assert_eq!((held.status, held.attempt), (Status::Running, 1));

    let _ = earlier_release.send(());
    let earlier = earlier.await.map_err(|error| error.to_string());
    assert!(
        matches!(earlier, Ok(Err(Error::Superseded { .. }))),
        "{earlier:?}"
    );
    let held = record(&harness, "k").await;
    assert_eq!((held.status, held.attempt), (Status::Running, 1));
    assert_eq!(held.result, None);

    let _ = later_release.send(());
    let later = later.await.map_err(|error| error.to_string());
    assert!(
        matches!(&later, Ok(Ok(Outcome::Executed(value))) if value == "later"),
        "{later:?}"
    );
    let finished = record(&harness, "k").await;
    assert_eq!(finished.status, Status::Finished);
    assert_eq!(finished.result.as_deref(), Some(&b"\"later\""[..]));
    assert_eq!(count(&runs), 2);
}

/// A complete sent again by the attempt that holds the record (its first answer lost to a
/// dropped connection: the manager tries a finish again after a transient error) answers
/// Done when the first one was applied, with the same session, and changes nothing.
pub async fn a_complete_tried_again_is_done<H: Harness>(harness: H) {
    let repository = harness.repository();
    let request = ClaimRequest {
        target: TARGET,
        key: "k",
        fingerprint: "payload".fingerprint(),
        reference_time: harness.clock().now(),
        timeout: Some(10 * MINUTE),
        expiration: Some(harness.clock().now() + HOUR),
    };
    let Ok(Claim::Acquired { lease, session, .. }) = repository.claim(&request).await else {
        panic!("the first claim of a key acquires it");
    };
    let id = RecordId::new(TARGET, "k");
    let result = Some(&b"\"once\""[..]);
    let first = repository
        .complete(session.clone(), id, lease, result)
        .await;
    assert_eq!(first.ok(), Some(Completion::Done));
    let finished = record(&harness, "k").await;
    let again = repository.complete(session, id, lease, result).await;
    assert_eq!(again.ok(), Some(Completion::Done));
    let after = record(&harness, "k").await;
    assert_eq!(after.status, Status::Finished);
    assert_eq!(
        (after.attempt, after.finished_at),
        (1, finished.finished_at)
    );
    assert_eq!(after.result, finished.result);
}

/// JSON, refusing to encode the result `"unencodable"`.
struct Refusing;

impl Codec<String> for Refusing {
    fn encode(&self, value: &String) -> Result<Vec<u8>, BoxError> {
        if value == "unencodable" {
            return Err("refused".into());
        }
        JsonCodec.encode(value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, BoxError> {
        JsonCodec.decode(bytes)
    }
}

/// A result the codec refuses is recorded as done all the same, Finished without a result: the
/// call and every later one for the key answer a codec error, and the operation never runs
/// again (a Failed record would let every retry do the work again).
pub async fn unencodable_result_is_recorded_and_never_runs_again<H: Harness>(harness: H) {
    let manager = Manager::with_codec(harness.repository(), Refusing).with_clock(harness.clock());
    let manager = match harness.replay_cache() {
        Some(cache) => manager.with_replay_cache(cache),
        None => manager,
    };
    let runs = counter();
    for _ in 0..2 {
        let out = manager
            .run(counting(&runs, "k", "payload", "unencodable"))
            .await;
        assert!(matches!(out, Err(Error::Codec(_))), "{out:?}");
    }
    assert_eq!(count(&runs), 1);
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.result, None);
}

/// When the expiration passes while the operation runs, the call returns Expired (never a
/// success) and the record is not Finished.
pub async fn expiry_during_execution_returns_expired<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let op = gated(&runs, "k", "late", started_tx, release_rx).expiration(HOUR);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    let _ = started_rx.await;
    advance(&harness, 2 * HOUR).await;
    let _ = release_tx.send(());
    let out = holder.await.map_err(|error| error.to_string());
    assert!(matches!(out, Ok(Err(Error::Expired { .. }))), "{out:?}");
    let record = record(&harness, "k").await;
    assert_ne!(record.status, Status::Finished);
    assert_eq!(record.result, None);
    if record.status == Status::Failed {
        assert_eq!(record.failure, Some(FailureKind::Expired));
    }
    assert_eq!(count(&runs), 1);
}

/// A call whose future is dropped mid-operation fails its attempt, so the next call runs.
pub async fn cancellation_frees_the_record<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let op = {
        let runs = Arc::clone(&runs);
        operation(TARGET, "k", "payload", move |_ctx: Session<H>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.send(());
            std::future::pending::<Result<String, Declined>>().await
        })
    };
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    let _ = started_rx.await;
    holder.abort();
    assert!(holder.await.is_err_and(|error| error.is_cancelled()));
    manager.flush().await;
    let record = record(&harness, "k").await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure, Some(FailureKind::Cancelled));
    assert_eq!(
        record.error.as_deref(),
        Some(FailureKind::Cancelled.message())
    );
    let retry = counting(&runs, "k", "payload", "retried");
    assert_eq!(executed(manager.run(retry).await), "retried");
    assert_eq!(count(&runs), 2);
}

/// The same key under two targets names two records.
pub async fn targets_scope_keys<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "one")).await);
    let other = {
        let runs = Arc::clone(&runs);
        operation(
            "[POST]/other",
            "k",
            "payload",
            move |_ctx: Session<H>| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Declined>("two".to_owned())
            },
        )
    };
    assert_eq!(executed(manager.run(other).await), "two");
    assert_eq!(count(&runs), 2);
}

/// Generates one `#[tokio::test]` per encryption case (feature `encryption`), each on a fresh
/// harness of the *plain* store from `$harness`: the cases wrap it in
/// [`Encrypted`](crate::encryption::Encrypted) under keyrings of their own and read the
/// sealed bytes through the plain store.
///
/// ```no_run
/// async fn harness() -> ana_core::conformance::MemoryHarness {
///     ana_core::conformance::MemoryHarness::new()
/// }
///
/// ana_core::encryption_conformance_tests!(harness());
/// # fn main() {}
/// ```
#[cfg(feature = "encryption")]
#[macro_export]
macro_rules! encryption_conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            encrypted_results_hold_no_plaintext,
            rotated_keys_still_replay,
            undecryptable_results_never_run_again,
            moved_results_do_not_decrypt,
        );
    };
}

#[cfg(feature = "encryption")]
pub use encryption_cases::*;

#[cfg(feature = "encryption")]
mod encryption_cases {
    use super::*;
    use crate::encryption::{Encrypted, EncryptionKey, Keyring};
    use crate::repository::{DecryptError, RepositoryError};

    /// The marker the cases' results carry, never to be found in the store.
    pub const MARKER: &str = "MARKER-4242-4242-secret";

    fn key(id: u32) -> EncryptionKey {
        EncryptionKey::new(id, &[0x10 + id as u8; 32])
    }

    fn sealing<H: Harness>(harness: &H, keyring: Keyring) -> TestManager<H> {
        Manager::new(Encrypted::new(harness.repository(), keyring)).with_clock(harness.clock())
    }

    /// The stored bytes of `key`'s result, as the plain store holds them.
    async fn stored<H: Harness>(harness: &H, key: &str) -> Vec<u8> {
        match record(harness, key).await.result {
            Some(bytes) => bytes,
            None => panic!("no stored result for {key}"),
        }
    }

    fn undecryptable(outcome: Result<Outcome<String>, Error<Declined>>) -> DecryptError {
        match outcome {
            Err(Error::Repository(RepositoryError::Undecryptable { source, .. })) => source,
            other => panic!("expected Undecryptable, got {other:?}"),
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    }

    /// The store holds the result sealed (no plaintext of it), the decorator reads it back,
    /// and a replay writes nothing back.
    pub async fn encrypted_results_hold_no_plaintext<H: Harness>(harness: H) {
        let manager = sealing(&harness, Keyring::new(key(0)));
        let runs = counter();
        executed(manager.run(counting(&runs, "k", "payload", MARKER)).await);
        let sealed = stored(&harness, "k").await;
        assert!(!contains(&sealed, MARKER), "plaintext in the store");
        assert!(!contains(&sealed, "4242"), "plaintext in the store");
        let plain = format!("\"{MARKER}\"");
        assert_eq!(sealed.len(), plain.len() + crate::encryption::OVERHEAD);
        let opened = manager.get(TARGET, "k").await.ok().flatten();
        assert_eq!(
            opened.and_then(|record| record.result),
            Some(plain.into_bytes())
        );
        assert_eq!(
            replayed(manager.run(counting(&runs, "k", "payload", "again")).await),
            MARKER
        );
        assert_eq!(count(&runs), 1);
        assert_eq!(stored(&harness, "k").await, sealed, "written back");
    }

    /// A result sealed under key 0 replays after key 1 becomes current (key 0 kept after it);
    /// new results are sealed under key 1; without key 0 the old one is an error.
    pub async fn rotated_keys_still_replay<H: Harness>(harness: H) {
        let runs = counter();
        let before = sealing(&harness, Keyring::new(key(0)));
        executed(
            before
                .run(counting(&runs, "old", "payload", "under 0"))
                .await,
        );
        let rotated = match Keyring::new(key(1)).with_previous(key(0)) {
            Ok(keyring) => keyring,
            Err(error) => panic!("{error}"),
        };
        let after = sealing(&harness, rotated);
        let old = after.run(counting(&runs, "old", "payload", "rerun")).await;
        assert_eq!(replayed(old), "under 0");
        executed(
            after
                .run(counting(&runs, "new", "payload", "under 1"))
                .await,
        );
        assert_eq!(stored(&harness, "old").await[1..5], 0u32.to_be_bytes());
        assert_eq!(stored(&harness, "new").await[1..5], 1u32.to_be_bytes());
        let dropped = sealing(&harness, Keyring::new(key(1)));
        let old = dropped
            .run(counting(&runs, "old", "payload", "rerun"))
            .await;
        assert_eq!(undecryptable(old), DecryptError::UnknownKey { id: 0 });
        let new = dropped
            .run(counting(&runs, "new", "payload", "rerun"))
            .await;
        assert_eq!(replayed(new), "under 1");
        assert_eq!(count(&runs), 2);
    }

    /// A wrong key, a missing key, or a result stored in plaintext is a typed error: the
    /// record stays Finished, unchanged, and the operation never runs again.
    pub async fn undecryptable_results_never_run_again<H: Harness>(harness: H) {
        let runs = counter();
        let manager = sealing(&harness, Keyring::new(key(0)));
        executed(manager.run(counting(&runs, "k", "payload", MARKER)).await);
        let sealed = stored(&harness, "k").await;
        let impostor = sealing(&harness, Keyring::new(EncryptionKey::new(0, &[0xee; 32])));
        let missing = sealing(&harness, Keyring::new(key(7)));
        for _ in 0..2 {
            let out = impostor.run(counting(&runs, "k", "payload", "rerun")).await;
            assert_eq!(undecryptable(out), DecryptError::Unauthentic { id: 0 });
            let out = missing.run(counting(&runs, "k", "payload", "rerun")).await;
            assert_eq!(undecryptable(out), DecryptError::UnknownKey { id: 0 });
        }
        assert!(matches!(
            impostor.get(TARGET, "k").await,
            Err(RepositoryError::Undecryptable { .. })
        ));
        let plain = manager_without_cache(&harness);
        executed(
            plain
                .run(counting(&runs, "plain", "payload", "clear"))
                .await,
        );
        let out = manager
            .run(counting(&runs, "plain", "payload", "rerun"))
            .await;
        assert_eq!(undecryptable(out), DecryptError::NotEncrypted);
        assert_eq!(count(&runs), 2);
        let record = record(&harness, "k").await;
        assert_eq!(record.status, Status::Finished);
        assert_eq!(record.result, Some(sealed));
        assert_eq!(record.attempt, 1);
    }

    /// A sealed result copied onto another record (another key, another target) does not
    /// open there: the identity is the associated data.
    pub async fn moved_results_do_not_decrypt<H: Harness>(harness: H) {
        let runs = counter();
        let manager = sealing(&harness, Keyring::new(key(0)));
        executed(manager.run(counting(&runs, "a", "payload", "for a")).await);
        executed(manager.run(counting(&runs, "b", "payload", "for b")).await);
        let mut b = record(&harness, "b").await;
        b.result = Some(stored(&harness, "a").await);
        harness.seed(b).await;
        let out = manager.run(counting(&runs, "b", "payload", "rerun")).await;
        assert_eq!(undecryptable(out), DecryptError::Unauthentic { id: 0 });
        let mut elsewhere = record(&harness, "a").await;
        elsewhere.target = "[POST]/elsewhere".to_owned();
        harness.seed(elsewhere).await;
        let other = {
            let runs = Arc::clone(&runs);
            operation(
                "[POST]/elsewhere",
                "a",
                "payload",
                move |_: Session<H>| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Declined>("rerun".to_owned())
                },
            )
        };
        assert_eq!(
            undecryptable(manager.run(other).await),
            DecryptError::Unauthentic { id: 0 }
        );
        let a = manager.run(counting(&runs, "a", "payload", "rerun")).await;
        assert_eq!(replayed(a), "for a");
        assert_eq!(count(&runs), 2);
    }

    fn manager_without_cache<H: Harness>(harness: &H) -> TestManager<H> {
        Manager::new(harness.repository()).with_clock(harness.clock())
    }
}

/// A manager's key `k` as [`Maintenance::forget`] names it.
const K: RecordId<'static> = RecordId::new(TARGET, "k");

async fn forget<H>(harness: &H, key: &str, force: bool) -> Forgotten
where
    H: Harness<Repository: Maintenance>,
{
    match harness
        .repository()
        .forget(RecordId::new(TARGET, key), force)
        .await
    {
        Ok(forgotten) => forgotten,
        Err(error) => panic!("forgetting {key} failed: {error:?}"),
    }
}

async fn absent<H: Harness>(harness: &H, key: &str) {
    match harness.repository().get(TARGET, key).await {
        Ok(None) => {}
        other => panic!("expected no record for {key}, got {other:?}"),
    }
}

/// A seeded Running record of `key` whose timeout is `timeout` from now (`None`: no timeout).
fn held(key: &str, now: DateTime<Utc>, timeout: Option<chrono::TimeDelta>) -> TrackedOperation {
    let mut record = seeded(key, Status::Running, now);
    record.timeout = timeout.map(|timeout| now + timeout);
    record
}

/// `get` reads one record back as it was stored, every field kept; an absent record is `None`.
pub async fn inspect_reads_one_record<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let now = harness.clock().now();
    let mut record = seeded("k", Status::Failed, now - chrono::TimeDelta::minutes(5));
    record.timeout = Some(now - chrono::TimeDelta::minutes(4));
    record.expiration = Some(now + chrono::TimeDelta::hours(24));
    record.error = Some("card declined".into());
    record.failure = Some(FailureKind::Error);
    record.error_count = 2;
    record.attempt = 2;
    harness.seed(record.clone()).await;
    assert_eq!(self::record(&harness, "k").await, record);
    absent(&harness, "other").await;
}

/// A Finished record forgotten is gone, and its key runs again as a first call. A replay cache
/// in front of the store does not learn of it: it replays the key until its entry's time to
/// live ends.
pub async fn forgetting_a_finished_record_lets_its_key_run_again<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let manager = manager(&harness);
    let runs = counter();
    executed(manager.run(counting(&runs, "k", "payload", "first")).await);
    assert_eq!(forget(&harness, "k", false).await, Forgotten::Deleted);
    absent(&harness, "k").await;
    if harness.replay_cache().is_some() {
        let cached = manager.run(counting(&runs, "k", "payload", "second")).await;
        assert_eq!(replayed(cached), "first");
        // Past the cache's time to live (five minutes by default).
        advance(&harness, 10 * MINUTE).await;
    }
    // Forgotten with its payload too: another payload is no mismatch now.
    let again = counting(&runs, "k", "another payload", "second");
    assert_eq!(executed(manager.run(again).await), "second");
    let record = record(&harness, "k").await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));
    assert_eq!(count(&runs), 2);
}

/// A Running record whose holder may still be at work (timeout ahead, or none) is refused
/// without force and deleted with it; the holder's late finish then writes nothing and its
/// call answers Expired.
pub async fn forgetting_a_held_record_is_refused_unless_forced<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let manager = manager(&harness);
    let runs = counter();
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let op = gated(&runs, "k", "late", started_tx, release_rx).timeout(10 * MINUTE);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    let _ = started_rx.await;
    let timeout = record(&harness, "k").await.timeout;
    assert!(timeout.is_some());
    assert_eq!(
        forget(&harness, "k", false).await,
        Forgotten::Held { timeout }
    );
    assert_eq!(record(&harness, "k").await.status, Status::Running);
    assert_eq!(forget(&harness, "k", true).await, Forgotten::Deleted);
    absent(&harness, "k").await;
    let _ = release_tx.send(());
    let late = holder.await.map_err(|error| error.to_string());
    assert!(matches!(late, Ok(Err(Error::Expired { .. }))), "{late:?}");
    absent(&harness, "k").await;

    harness
        .seed(held("untimed", harness.clock().now(), None))
        .await;
    assert_eq!(
        forget(&harness, "untimed", false).await,
        Forgotten::Held { timeout: None }
    );
    assert_eq!(forget(&harness, "untimed", true).await, Forgotten::Deleted);
    absent(&harness, "untimed").await;
}

/// A Running record past its timeout (its holder crashed or is too slow) is forgotten without
/// force.
pub async fn forgetting_a_timed_out_record_needs_no_force<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let now = harness.clock().now();
    let timed_out = held("k", now, Some(-chrono::TimeDelta::minutes(1)));
    harness.seed(timed_out).await;
    assert_eq!(forget(&harness, "k", false).await, Forgotten::Deleted);
    absent(&harness, "k").await;
    let runs = counter();
    let out = manager(&harness)
        .run(counting(&runs, "k", "payload", "fresh"))
        .await;
    assert_eq!(executed(out), "fresh");
}

/// Forgetting a record that is not there deletes nothing and says so, with or without force.
pub async fn forgetting_an_absent_record_is_not_found<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let repository = harness.repository();
    for force in [false, true] {
        match repository.forget(K, force).await {
            Ok(Forgotten::NotFound) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    let runs = counter();
    executed(
        manager(&harness)
            .run(counting(&runs, "k", "payload", "a"))
            .await,
    );
    let other_target = RecordId::new("[POST]/other", "k");
    match repository.forget(other_target, false).await {
        Ok(Forgotten::NotFound) => {}
        other => panic!("expected NotFound for another target, got {other:?}"),
    }
    assert_eq!(record(&harness, "k").await.status, Status::Finished);
}

async fn stats<H>(harness: &H) -> Stats
where
    H: Harness<Repository: Maintenance>,
{
    match harness.repository().stats().await {
        Ok(stats) => stats,
        Err(error) => panic!("stats failed: {error:?}"),
    }
}

/// `stats` counts the store's records by status, and among them the Running ones past their
/// timeout and those past their expiration.
pub async fn stats_count_records_by_status<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    assert_eq!(stats(&harness).await, Stats::default());
    let now = harness.clock().now();
    let hour = chrono::TimeDelta::hours(1);
    let mut ready = seeded("ready", Status::Ready, now);
    ready.attempt = 0;
    ready.started_at = None;
    let mut expired = seeded("finished-expired", Status::Finished, now - hour * 3);
    expired.expiration = Some(now - hour);
    expired.result = Some(b"\"old\"".to_vec());
    let mut failed = seeded("failed", Status::Failed, now);
    failed.error = Some("boom".into());
    failed.failure = Some(FailureKind::Error);
    failed.error_count = 1;
    for record in [
        ready,
        held("held", now, Some(hour)),
        held("untimed", now, None),
        held("timed-out", now, Some(-hour)),
        expired,
        failed,
    ] {
        harness.seed(record).await;
    }
    let runs = counter();
    let manager = manager(&harness);
    for key in ["finished-1", "finished-2"] {
        executed(manager.run(counting(&runs, key, "payload", "done")).await);
    }
    let stats = stats(&harness).await;
    let counts = (stats.ready, stats.running, stats.finished, stats.failed);
    assert_eq!(counts, (1, 3, 3, 1), "{stats:?}");
    assert_eq!((stats.timed_out, stats.expired), (1, 1), "{stats:?}");
    assert_eq!(stats.total(), 8);
    assert_eq!(stats.of(Status::Running), 3);
}

async fn cleanup<H>(harness: &H, limit: u32) -> crate::maintenance::Cleaned
where
    H: Harness<Repository: Maintenance>,
{
    match harness.repository().cleanup(limit).await {
        Ok(cleaned) => cleaned,
        Err(error) => panic!("cleanup failed: {error:?}"),
    }
}

/// `cleanup` marks Running records past their timeout Failed (timed out) and deletes expired
/// records, but never one whose holder may still be at work; a store that deletes expired
/// records by itself says so and deletes none.
pub async fn cleanup_fails_timed_out_records_and_deletes_expired_ones<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let now = harness.clock().now();
    let hour = chrono::TimeDelta::hours(1);
    let mut expired = seeded("expired", Status::Finished, now - hour * 3);
    expired.expiration = Some(now - hour);
    expired.result = Some(b"\"old\"".to_vec());
    let mut held_expired = held("held-expired", now - hour * 3, Some(hour * 4));
    held_expired.expiration = Some(now - hour);
    let mut live = seeded("live", Status::Finished, now);
    live.result = Some(b"\"new\"".to_vec());
    for record in [
        held("timed-out", now, Some(-chrono::TimeDelta::minutes(1))),
        expired,
        held_expired,
        live,
    ] {
        harness.seed(record).await;
    }
    let cleaned = cleanup(&harness, 100).await;
    assert_eq!(cleaned.failed, 1, "{cleaned:?}");
    let timed_out = record(&harness, "timed-out").await;
    assert_eq!(timed_out.status, Status::Failed);
    assert_eq!(timed_out.failure, Some(FailureKind::TimedOut));
    assert_eq!(
        timed_out.error.as_deref(),
        Some(FailureKind::TimedOut.message())
    );
    assert_eq!((timed_out.error_count, timed_out.attempt), (1, 1));
    if cleaned.expires_itself {
        assert_eq!(cleaned.deleted, 0, "{cleaned:?}");
        assert_eq!(record(&harness, "expired").await.status, Status::Finished);
    } else {
        assert_eq!(cleaned.deleted, 1, "{cleaned:?}");
        absent(&harness, "expired").await;
    }
    assert_eq!(
        record(&harness, "held-expired").await.status,
        Status::Running
    );
    assert_eq!(record(&harness, "live").await.status, Status::Finished);

    let again = cleanup(&harness, 100).await;
    assert_eq!((again.failed, again.deleted), (0, 0), "{again:?}");
    // A record failed by the clean-up runs again on the next call.
    let runs = counter();
    let retry = manager(&harness)
        .run(counting(&runs, "timed-out", "payload", "retried"))
        .await;
    assert_eq!(executed(retry), "retried");
}

/// `cleanup` changes at most `limit` records of each kind per call.
pub async fn cleanup_stops_at_its_limit<H>(harness: H)
where
    H: Harness<Repository: Maintenance>,
{
    let now = harness.clock().now();
    let hour = chrono::TimeDelta::hours(1);
    for n in 0..3 {
        harness
            .seed(held(&format!("timed-out-{n}"), now, Some(-hour)))
            .await;
        let mut expired = seeded(&format!("expired-{n}"), Status::Failed, now - hour * 3);
        expired.expiration = Some(now - hour);
        expired.error = Some("boom".into());
        expired.failure = Some(FailureKind::Error);
        harness.seed(expired).await;
    }
    let first = cleanup(&harness, 2).await;
    let second = cleanup(&harness, 2).await;
    assert_eq!((first.failed, second.failed), (2, 1));
    if first.expires_itself {
        assert_eq!((first.deleted, second.deleted), (0, 0));
    } else {
        assert_eq!((first.deleted, second.deleted), (2, 1));
    }
    let stats = stats(&harness).await;
    assert_eq!((stats.running, stats.timed_out), (0, 0), "{stats:?}");
}
