//! [`Manager`]: drives one call through claim, execution and finish.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::Notify;

use crate::cache::ReplayCache;
use crate::clock::{self, Clock, SystemClock};
use crate::codec::{Codec, JsonCodec};
use crate::error::Error;
use crate::lease::{self, Renew, Renewing, Waiting};
use crate::observe::{CallOutcome, Event, EventKind, Observed, Reporting, StoreTimer, Subject};
use crate::operation::Operation;
use crate::record::{FailureKind, Fingerprint, Payload, Status, TrackedOperation};
use crate::repository::{
    BoxError, Claim, ClaimRequest, Completion, Failure, IdempotencyRepository, Lease, RecordId,
    Renewal, RepositoryError, SharedRecordId,
};
use crate::retry::FinishRetry;

/// The shortest timeout a call may ask for unless the manager says otherwise
/// ([`Manager::with_min_timeout`]): one second.
pub const DEFAULT_MIN_TIMEOUT: Duration = Duration::from_secs(1);
use crate::wake::Watch;

/// Why a key whose result could not be encoded is answered [`Error::Codec`].
#[derive(Debug, thiserror::Error)]
#[error("the operation ran, but its result could not be encoded for storage; it is not replayed")]
struct Unencodable;

/// The result of a managed call, saying whether the operation ran now or was replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// The operation ran in this call and its result was recorded.
    Executed(R),
    /// An earlier call's recorded result.
    Replayed(R),
}

impl<R> Outcome<R> {
    /// The result, however it was obtained.
    pub fn into_inner(self) -> R {
        match self {
            Self::Executed(value) | Self::Replayed(value) => value,
        }
    }

    /// Whether the result was replayed from the store.
    pub fn is_replayed(&self) -> bool {
        matches!(self, Self::Replayed(_))
    }
}

/// Makes operations idempotent over an [`IdempotencyRepository`].
///
/// `P` is the operations' payload type, `R` their result type and `Ctx` the store's session
/// context (the transaction an operation runs in, for Postgres). The store is held behind an
/// `Arc`, so clones are cheap and share it.
///
/// A call, in order (see the crate docs for the full contract):
/// 1. a timeout below the [minimum](Self::with_min_timeout) → [`Error::TimeoutTooShort`], or
///    expired by its own reference time → [`Error::Expired`], storage untouched;
/// 2. one atomic claim; on the record as it stood: other payload → [`Error::PayloadMismatch`],
///    Finished → replay, expired → [`Error::Expired`], held → [`Error::StillRunning`];
/// 3. otherwise the call owns a fresh attempt and runs the operation, panics caught;
/// 4. finish as a compare-and-set on the attempt: Finished, Failed, [`Error::Superseded`] or
///    [`Error::Expired`]; tried again after a transient store error ([`FinishRetry`]).
///
/// ```
/// use ana_core::{operation, Manager, MemoryRepository, MemorySession};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager: Manager<&str, u64, MemorySession> = Manager::new(MemoryRepository::new());
/// let charge = |ctx: MemorySession| async move { Ok::<_, std::io::Error>(ctx.attempt() * 100) };
///
/// let first = manager.call(operation("charge", "key-1", "100 EUR", charge)).await?;
/// let again = manager.call(operation("charge", "key-1", "100 EUR", charge)).await?;
/// assert_eq!((first, again), (100, 100));
/// # Ok(()) }
/// ```
pub struct Manager<P: ?Sized, R, Ctx> {
    repository: Arc<dyn DynRepository<Ctx>>,
    codec: Arc<dyn Codec<R>>,
    clock: Arc<dyn Clock>,
    cleanups: Arc<Cleanups>,
    replay_cache: Option<ReplayCache>,
    reporting: Reporting,
    min_timeout: Option<Duration>,
    finish_retry: FinishRetry,
    max_lease: Option<Duration>,
    payload: PhantomData<fn(&P)>,
}

impl<P: ?Sized, R, Ctx> Clone for Manager<P, R, Ctx> {
    fn clone(&self) -> Self {
        Self {
            repository: Arc::clone(&self.repository),
            codec: Arc::clone(&self.codec),
            clock: Arc::clone(&self.clock),
            cleanups: Arc::clone(&self.cleanups),
            replay_cache: self.replay_cache.clone(),
            reporting: self.reporting.clone(),
            min_timeout: self.min_timeout,
            finish_retry: self.finish_retry,
            max_lease: self.max_lease,
            payload: PhantomData,
        }
    }
}

impl<P: ?Sized, R, Ctx> fmt::Debug for Manager<P, R, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("clock", &self.clock)
            .field("pending_cleanups", &self.cleanups.pending())
            .field("reporting", &self.reporting)
            .finish_non_exhaustive()
    }
}

impl<P, R, Ctx> Manager<P, R, Ctx>
where
    P: Payload + ?Sized,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    /// A manager storing results as JSON.
    pub fn new<S>(repository: S) -> Self
    where
        S: IdempotencyRepository<Session = Ctx>,
    {
        Self::with_codec(repository, JsonCodec)
    }
}

impl<P, R, Ctx> Manager<P, R, Ctx>
where
    P: Payload + ?Sized,
    R: Send + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    /// A manager storing results with `codec`.
    pub fn with_codec<S, C>(repository: S, codec: C) -> Self
    where
        S: IdempotencyRepository<Session = Ctx>,
        C: Codec<R>,
    {
        Self {
            repository: Arc::new(repository),
            codec: Arc::new(codec),
            clock: Arc::new(SystemClock),
            cleanups: Arc::default(),
            replay_cache: None,
            reporting: Reporting::default(),
            min_timeout: Some(DEFAULT_MIN_TIMEOUT),
            finish_retry: FinishRetry::default(),
            max_lease: None,
            payload: PhantomData,
        }
    }

    /// Uses `clock` for the expiry check made before storage is touched (default: the system
    /// clock). Stored deadlines are compared on the store's own clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Answers repeated replays from `cache` before the store is asked (see [`ReplayCache`]
    /// for what it keeps and for how long). Worth it for a store across the network (Postgres,
    /// Redis): a replay then costs no round trip. Clones of the manager share the cache.
    #[must_use]
    pub fn with_replay_cache(mut self, cache: ReplayCache) -> Self {
        self.replay_cache = Some(cache);
        self
    }

    /// Renews the leases of attempts while their operations run, up to `max` after their
    /// claim (default: no renewal; the attempt holds the record until its claim's timeout).
    ///
    /// Every third of an attempt's timeout, its holder moves the record's timeout to the
    /// store's time plus the timeout again (a compare-and-set on its [`Lease`]), never past
    /// `max` after the claim. A live operation slower than its timeout is then not taken over
    /// until `max`, and a crashed holder still frees its key one timeout after its last
    /// renewal. Renewing stops when the attempt is finished, failed or dropped. An attempt
    /// without a timeout holds its record until it finishes anyway; one outside a Tokio
    /// runtime is not renewed. A store that does not renew
    /// ([`Renewal::Unsupported`]) leaves the claim's timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ana_core::{operation, Manager, MemoryRepository, MemorySession};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager: Manager<&str, u8, MemorySession> = Manager::new(MemoryRepository::new())
    ///     .with_max_lease(Duration::from_secs(300));
    /// // Held 30 s at a time, renewed every 10 s while the report runs, for 5 minutes at most.
    /// let report = operation("report", "r-1", "q3", |_: MemorySession| async {
    ///     Ok::<_, std::io::Error>(1)
    /// })
    /// .timeout(Duration::from_secs(30));
    /// assert_eq!(manager.call(report).await?, 1);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_max_lease(mut self, max: Duration) -> Self {
        self.max_lease = Some(max);
        self
    }

    /// Calls `hook` with every [`Event`] of every call: its outcome, and a takeover of a
    /// timed-out holder. For an audit log, or metrics of your own; it runs on the call's task,
    /// so keep it short. Clones of the manager share it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use ana_core::{operation, CallOutcome, EventKind, Manager, MemoryRepository, MemorySession};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let manager: Manager<String, u8, MemorySession> = Manager::new(MemoryRepository::new())
    ///     .on_event(move |event| log.lock().unwrap().push(event.kind));
    /// let work = |_: MemorySession| async { Ok::<_, std::io::Error>(1) };
    /// manager.call(operation("t", "k", "p".to_owned(), work)).await?;
    /// manager.call(operation("t", "k", "p".to_owned(), work)).await?;
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     [EventKind::Outcome(CallOutcome::Executed), EventKind::Outcome(CallOutcome::Replayed)]
    /// );
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.reporting = self.reporting.with_hook(Arc::new(hook));
        self
    }

    /// Reports keys as they are stored instead of a short hash of them (the default: a key
    /// may be personal data, or guessable).
    #[must_use]
    pub fn with_raw_keys(mut self, raw: bool) -> Self {
        self.reporting.raw_keys = raw;
        self
    }

    /// Whether calls make an `ana.call` span (default: yes; with no `tracing` subscriber
    /// listening a span costs next to nothing).
    #[must_use]
    pub fn with_spans(mut self, spans: bool) -> Self {
        self.reporting = self.reporting.with_spans(spans);
        self
    }

    /// Whether a call's [`label`](Call::label) is read: by the event hook, or by the metrics
    /// (feature `metrics`). Without either, a caller may skip making one.
    pub fn reports_labels(&self) -> bool {
        cfg!(feature = "metrics") || self.reporting.has_hook()
    }

    /// The shortest timeout a call may ask for (default [`DEFAULT_MIN_TIMEOUT`], one second;
    /// `None`: no floor). A call with a shorter one is refused with [`Error::TimeoutTooShort`]
    /// before the store is touched: past its timeout another call takes the record over and
    /// runs the work again, so a tiny timeout would let every retry run it. Calls without a
    /// timeout are not concerned.
    #[must_use]
    pub fn with_min_timeout(mut self, min: Option<Duration>) -> Self {
        self.min_timeout = min;
        self
    }

    /// How a finish is tried again after a transient store error (see [`FinishRetry`]).
    #[must_use]
    pub fn with_finish_retry(mut self, retry: FinishRetry) -> Self {
        self.finish_retry = retry;
        self
    }

    /// The shortest timeout a call may ask for.
    pub fn min_timeout(&self) -> Option<Duration> {
        self.min_timeout
    }

    /// The store's name (`memory`, `postgres`, `redis`, …).
    pub fn store_name(&self) -> &'static str {
        self.repository.name()
    }

    /// The replay cache, when there is one.
    pub fn replay_cache(&self) -> Option<&ReplayCache> {
        self.replay_cache.as_ref()
    }

    /// The current time on the manager's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs `operation` at most once for its `(target, key)` and returns its result, or the
    /// result recorded by an earlier call.
    ///
    /// A result the codec cannot encode still counts as done: the record turns Finished
    /// without a result, this call and every later one for the key get [`Error::Codec`], and
    /// the operation never runs again.
    pub async fn call<O>(&self, operation: O) -> Result<R, Error<O::Error>>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        self.run(operation).await.map(Outcome::into_inner)
    }

    /// Like [`call`](Self::call), but a call that finds the record held by another attempt
    /// waits up to `wait` for it to finish, then replays its result (or runs the operation,
    /// when the holder failed or its timeout passed). When the wait runs out it answers
    /// [`Error::StillRunning`] as `call` does, its `retry_after` read at the end of the wait.
    ///
    /// The waiting call holds no connection, lock or thread: it sleeps between wake-ups pushed
    /// by the store ([`IdempotencyRepository::watch`]) and polls of the store with a backoff
    /// (up to one second apart), so a lost wake-up only delays it. It never runs the operation
    /// while the holder's lease is alive.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ana_core::{operation, Manager, MemoryRepository, MemorySession};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager: Manager<&str, String, MemorySession> = Manager::new(MemoryRepository::new());
    /// let (release, released) = tokio::sync::oneshot::channel::<()>();
    /// let slow = operation("pay", "k", "10 EUR", |_: MemorySession| async move {
    ///     let _ = released.await;
    ///     Ok::<_, std::io::Error>("paid".to_owned())
    /// });
    /// let first = tokio::spawn({
    ///     let manager = manager.clone();
    ///     async move { manager.call(slow).await }
    /// });
    /// tokio::task::yield_now().await; // the first call holds the record
    /// let retry = operation("pay", "k", "10 EUR", |_: MemorySession| async {
    ///     Ok::<_, std::io::Error>("paid twice".to_owned())
    /// });
    /// let waiting = manager.call_or_wait(retry, Duration::from_secs(5));
    /// let _ = release.send(());
    /// assert_eq!(waiting.await?, "paid");
    /// assert_eq!(first.await??, "paid");
    /// # Ok(()) }
    /// ```
    pub async fn call_or_wait<O>(&self, operation: O, wait: Duration) -> Result<R, Error<O::Error>>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        self.run_or_wait(operation, wait)
            .await
            .map(Outcome::into_inner)
    }

    /// Like [`call_or_wait`](Self::call_or_wait), and says whether the result was replayed.
    pub async fn run_or_wait<O>(
        &self,
        operation: O,
        wait: Duration,
    ) -> Result<Outcome<R>, Error<O::Error>>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        self.run_waiting(operation, Some(wait)).await
    }

    /// Like [`call`](Self::call), and says whether the result was replayed.
    ///
    /// Three steps: [`begin`](Self::begin) (the expiry check and the claim), the operation
    /// (panics caught), and the attempt's [`complete`](Attempt::complete) or
    /// [`fail`](Attempt::fail).
    pub async fn run<O>(&self, operation: O) -> Result<Outcome<R>, Error<O::Error>>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        self.run_waiting(operation, None).await
    }

    async fn run_waiting<O>(
        &self,
        operation: O,
        wait: Option<Duration>,
    ) -> Result<Outcome<R>, Error<O::Error>>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        let attempt = match self.begin(Call::of(&operation).wait(wait)).await? {
            Begun::Replayed(value) => return Ok(Outcome::Replayed(value)),
            Begun::Acquired(attempt) => attempt,
        };
        let session = attempt.session().clone();
        match execute(operation, session).await {
            Ok(Ok(value)) => {
                attempt.complete(&value).await?;
                Ok(Outcome::Executed(value))
            }
            Ok(Err(error)) => {
                // A failed attempt reports its own error, whatever became of its record: the
                // record stays Running until its timeout if the store failed.
                let message = error.to_string();
                let _ = attempt
                    .fail(Failure::new(FailureKind::Error, &message))
                    .await;
                Err(Error::Operation(error))
            }
            Err(panic) => {
                let message = panic_text(&*panic);
                let _ = attempt
                    .fail(Failure::new(FailureKind::Panic, &message))
                    .await;
                Err(Error::Panic { message })
            }
        }
    }

    /// The first step of a call, for callers that run the work themselves (an HTTP adapter
    /// whose handler is not `Send`, a consumer that acknowledges in between): the expiry check,
    /// the replay cache, then one atomic claim.
    ///
    /// Answers the recorded result ([`Begun::Replayed`]), or the [`Attempt`] this call now
    /// holds: do the work with its [`session`](Attempt::session), then
    /// [`complete`](Attempt::complete) or [`fail`](Attempt::fail) it. An attempt dropped
    /// unfinished is failed in the background (see [`flush`](Self::flush)).
    ///
    /// ```
    /// use ana_core::{Begun, Call, Fingerprint, Manager, MemoryRepository, MemorySession};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ana_core::Error<std::convert::Infallible>> {
    /// let manager: Manager<Fingerprint, String, MemorySession> =
    ///     Manager::new(MemoryRepository::new());
    /// let call = || Call::new("send-email", "msg-1", Fingerprint::of("hello"));
    /// match manager.begin(call()).await? {
    ///     Begun::Acquired(attempt) => attempt.complete(&"queued".to_owned()).await?,
    ///     Begun::Replayed(_) => unreachable!("the first call runs"),
    /// }
    /// assert!(matches!(manager.begin(call()).await?, Begun::Replayed(sent) if sent == "queued"));
    /// # Ok(()) }
    /// ```
    pub async fn begin<E>(&self, call: Call<'_>) -> Result<Begun<'_, P, R, Ctx>, Error<E>> {
        let subject = self.subject(&call);
        let observed = Observed::start(&self.reporting, subject);
        let started = tokio::time::Instant::now();
        let step = within(&observed, self.claim(&call, &observed)).await;
        let outcome = match step {
            Ok(Step::Acquired {
                lease,
                session,
                cached,
                took_over,
            }) => {
                observed.hold(lease.attempt);
                let renewal = self.renew(&call, lease);
                if took_over {
                    let attempt = Some(lease.attempt);
                    observed.report(&self.reporting, subject, EventKind::Takeover, attempt);
                }
                return Ok(Begun::Acquired(Attempt {
                    held: Held {
                        manager: self,
                        record: SharedRecordId::new(call.target, call.key),
                        label: call.label.map(Box::from),
                        lease,
                        armed: Some(session.clone()),
                        deadline: call.timeout.map(|timeout| deadline(started, timeout)),
                        observed,
                        reported: false,
                        renewal,
                    },
                    session,
                    cached,
                }));
            }
            Ok(Step::Replayed(value)) => Ok(Begun::Replayed(value)),
            Err(error) => Err(error),
        };
        let reported = match &outcome {
            Ok(_) => CallOutcome::Replayed,
            Err(error) => CallOutcome::of_error(error),
        };
        observed.report(&self.reporting, subject, EventKind::Outcome(reported), None);
        outcome
    }

    fn subject<'c>(&self, call: &Call<'c>) -> Subject<'c> {
        Subject {
            target: call.target,
            label: call.label.unwrap_or(call.target),
            key: call.key,
            store: self.repository.name(),
        }
    }

    /// Starts renewing the lease of an attempt with a timeout, when leases are renewed.
    fn renew(&self, call: &Call<'_>, lease: Lease) -> Option<Renewing> {
        let max = self.max_lease?;
        let timeout = call.timeout.filter(|timeout| !timeout.is_zero())?;
        let store: Arc<dyn Renew> = Arc::clone(&self.repository) as Arc<dyn DynRepository<Ctx>>;
        lease::start(store, call.target, call.key, lease, timeout, max)
    }

    /// The expiry check, the replay cache and the claim; while the record is held by another
    /// attempt and the call may wait, the claim again whenever the record may have changed.
    async fn claim<E>(
        &self,
        call: &Call<'_>,
        observed: &Observed,
    ) -> Result<Step<R, Ctx>, Error<E>> {
        call.check_timeout(self.min_timeout)?;
        let now = self.clock.now();
        let reference_time = call.reference_time.unwrap_or(now);
        let expiration = call.expiration.map(|e| clock::add(reference_time, e));
        if expiration.is_some_and(|expiration| now > expiration) {
            return Err(call.expired());
        }
        if let Some(replayed) = self.replay_cached(call, now) {
            return replayed.map(Step::Replayed);
        }
        let request = ClaimRequest {
            target: call.target,
            key: call.key,
            fingerprint: call.fingerprint,
            reference_time,
            timeout: call.timeout,
            expiration,
        };
        let step = self.claim_once(&request).await;
        let wait = match (&step, call.wait_ms) {
            (Err(Error::StillRunning { .. }), Some(ms)) => Duration::from_millis(u64::from(ms)),
            _ => return step,
        };
        drop(step);
        // Boxed: a call that does not wait keeps a small future.
        Box::pin(self.wait_for_holder(&request, wait, observed, call)).await
    }

    /// Claims again whenever the record may have changed (a wake-up, a poll, the holder's
    /// timeout), until it is no longer held or `wait` has passed.
    async fn wait_for_holder<E>(
        &self,
        request: &ClaimRequest<'_>,
        wait: Duration,
        observed: &Observed,
        call: &Call<'_>,
    ) -> Result<Step<R, Ctx>, Error<E>> {
        // Watching starts before the next read, so a finish in between wakes the call.
        let watch = self
            .repository
            .watch(RecordId::new(request.target, request.key));
        let mut waiting = Waiting::new(watch, wait);
        let subject = self.subject(call);
        observed.report(&self.reporting, subject, EventKind::Waiting, None);
        loop {
            let step = self.claim_once(request).await;
            let Err(Error::StillRunning { retry_after, .. }) = &step else {
                return step;
            };
            if !waiting.pause(*retry_after).await {
                return step;
            }
        }
    }

    /// One claim, and what the record it answered means for the call.
    async fn claim_once<E>(&self, request: &ClaimRequest<'_>) -> Result<Step<R, Ctx>, Error<E>> {
        let timer = StoreTimer::start();
        // A store that answers at once (the memory store) takes no boxed future.
        // (`if let`: its scrutinee is gone before `else`, and takes no room across the await.)
        let claimed = if let Some(claimed) = self.repository.claim_now(request) {
            claimed
        } else {
            self.repository.claim(request).await
        };
        timer.stop(self.repository.name(), "claim");
        let (lease, session, previous) = match claimed? {
            Claim::Existing { record, now } => {
                self.cache_finished(&record);
                return self
                    .verdict(record, request.fingerprint, now)
                    .map(Step::Replayed);
            }
            Claim::Acquired {
                lease,
                session,
                previous,
            } => (lease, session, previous),
        };
        // A record this claim created has this call's expiration; one taken over keeps its
        // first call's, which only the store knows: only the first is cached.
        let cached = (lease.attempt == 1).then_some((request.fingerprint, request.expiration));
        Ok(Step::Acquired {
            lease,
            session,
            cached,
            took_over: previous == Some(Status::Running),
        })
    }

    /// The replay cache's answer for `call`, with the same checks, in the same order, as on a
    /// Finished record in the store.
    fn replay_cached<E>(&self, call: &Call<'_>, now: DateTime<Utc>) -> Option<Result<R, Error<E>>> {
        let hit = self.replay_cache.as_ref()?.get(call.target, call.key, now);
        crate::observe::replay_cache_lookup(hit.is_some());
        let hit = hit?;
        if hit.fingerprint != call.fingerprint {
            return Some(Err(Error::PayloadMismatch {
                target: call.target.to_owned(),
                key: call.key.to_owned(),
            }));
        }
        Some(self.replay(&hit.result))
    }

    /// Keeps a Finished record the store answered in the replay cache.
    fn cache_finished(&self, record: &TrackedOperation) {
        if let (Some(cache), Status::Finished, Some(result)) =
            (&self.replay_cache, record.status, &record.result)
        {
            cache.insert(
                &record.target,
                &record.key,
                record.fingerprint,
                result,
                self.clock.now(),
                record.expiration,
            );
        }
    }

    /// A stored result, decoded for a replay.
    fn replay<E>(&self, bytes: &[u8]) -> Result<R, Error<E>> {
        self.codec.decode(bytes).map_err(Error::Codec)
    }

    /// Reads the stored record of `(target, key)`.
    pub async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        self.repository.get(target, key).await
    }

    /// Waits until the background clean-ups of cancelled calls (which mark their attempts
    /// Failed) have reached the store. Call it before shutting down.
    pub async fn flush(&self) {
        self.cleanups.wait_idle().await;
    }

    /// What an existing record means for this call, checked in the order of the contract.
    fn verdict<E>(
        &self,
        record: TrackedOperation,
        fingerprint: Fingerprint,
        now: DateTime<Utc>,
    ) -> Result<R, Error<E>> {
        let TrackedOperation {
            target,
            key,
            status,
            ..
        } = &record;
        if record.fingerprint != fingerprint {
            return Err(Error::PayloadMismatch {
                target: target.clone(),
                key: key.clone(),
            });
        }
        if *status == Status::Finished {
            // Finished without a result: the run is done, its result could not be encoded.
            return match record.result.as_deref() {
                Some(bytes) => self.replay(bytes),
                None => Err(Error::Codec(Unencodable.into())),
            };
        }
        if record.is_expired_at(now) {
            return Err(Error::Expired {
                target: record.target,
                key: record.key,
            });
        }
        match (status, record.timeout) {
            (Status::Running, None) => Err(Error::StillRunning {
                target: record.target,
                key: record.key,
                retry_after: None,
            }),
            (Status::Running, Some(timeout)) if now < timeout => Err(Error::StillRunning {
                target: record.target,
                key: record.key,
                retry_after: Some(clock::until(now, timeout)),
            }),
            _ => Err(Error::Repository(RepositoryError::Corrupt {
                detail: format!(
                    "the store returned the claimable record {target}/{key} ({status}) without claiming it"
                ),
            })),
        }
    }
}

/// What identifies a call and bounds it in time: an [`Operation`] without its work. Given to
/// [`Manager::begin`].
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    target: &'a str,
    label: Option<&'a str>,
    key: &'a str,
    fingerprint: Fingerprint,
    reference_time: Option<DateTime<Utc>>,
    timeout: Option<Duration>,
    expiration: Option<Duration>,
    /// The wait in milliseconds (kept small: a call lives in every request's future).
    wait_ms: Option<u32>,
}

impl<'a> Call<'a> {
    /// A call of `target` for `key` with a payload of that fingerprint; no reference time
    /// (now), no timeout and no expiration.
    pub fn new(target: &'a str, key: &'a str, fingerprint: Fingerprint) -> Self {
        Self {
            target,
            label: None,
            key,
            fingerprint,
            reference_time: None,
            timeout: None,
            expiration: None,
            wait_ms: None,
        }
    }

    /// The call an operation makes.
    pub fn of<Ctx, O: Operation<Ctx>>(operation: &'a O) -> Self {
        Self {
            target: operation.target(),
            label: None,
            key: operation.key(),
            fingerprint: operation.payload().fingerprint(),
            reference_time: operation.reference_time(),
            timeout: operation.timeout(),
            expiration: operation.expiration(),
            wait_ms: None,
        }
    }

    /// A bounded name for the call in metrics and events (an HTTP route such as
    /// `/payments/{id}`, where the target holds the path itself); the target when not set.
    #[must_use]
    pub fn label(mut self, label: &'a str) -> Self {
        self.label = Some(label);
        self
    }

    /// When the caller issued the request (`None`: now).
    #[must_use]
    pub fn reference_time(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.reference_time = at;
        self
    }

    /// How long the attempt holds the record (`None`: until it finishes).
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long after the reference time the call may still run (`None`: forever).
    #[must_use]
    pub fn expiration(mut self, expiration: Option<Duration>) -> Self {
        self.expiration = expiration;
        self
    }

    /// How long the call may wait for another attempt holding the record to finish (`None`,
    /// the default: it answers [`Error::StillRunning`] at once), to the millisecond, at most
    /// about 49 days. See [`Manager::call_or_wait`].
    #[must_use]
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait_ms = wait
            .map(|wait| u32::try_from(wait.as_millis()).unwrap_or(u32::MAX))
            .filter(|ms| *ms > 0);
        self
    }

    fn expired<E>(&self) -> Error<E> {
        Error::Expired {
            target: self.target.to_owned(),
            key: self.key.to_owned(),
        }
    }

    /// [`Error::TimeoutTooShort`] when the call's timeout is below `min`.
    fn check_timeout<E>(&self, min: Option<Duration>) -> Result<(), Error<E>> {
        match (self.timeout, min) {
            (Some(timeout), Some(min)) if timeout < min => Err(Error::TimeoutTooShort {
                target: self.target.to_owned(),
                key: self.key.to_owned(),
                timeout,
                min,
            }),
            _ => Ok(()),
        }
    }
}

/// When an attempt claimed at `started` with `timeout` may be taken over (far ahead for a
/// timeout too long to add).
fn deadline(started: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    started
        .checked_add(timeout)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 366 * 24 * 3600))
}

/// What the claim step found.
enum Step<R, Ctx> {
    Replayed(R),
    Acquired {
        lease: Lease,
        session: Ctx,
        cached: Option<(Fingerprint, Option<DateTime<Utc>>)>,
        /// The record was Running, its holder's timeout past.
        took_over: bool,
    },
}

/// `future`, run in the call's span.
#[cfg(feature = "tracing")]
fn within<F: Future>(observed: &Observed, future: F) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(future, observed.span().clone())
}

#[cfg(not(feature = "tracing"))]
fn within<F: Future>(_: &Observed, future: F) -> F {
    future
}

/// What [`Manager::begin`] found.
#[derive(Debug)]
// Returned once per call and matched at once: boxing the attempt would cost an allocation
// per call to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Begun<'m, P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> {
    /// An earlier call's recorded result.
    Replayed(R),
    /// This call holds the record: do the work, then finish the attempt.
    Acquired(Attempt<'m, P, R, Ctx>),
}

/// The attempt a call holds (from [`Manager::begin`]): the store's session to do the work in,
/// then exactly one of [`complete`](Self::complete) or [`fail`](Self::fail). Dropped
/// unfinished (a cancelled call), it is failed in the background.
#[derive(Debug)]
pub struct Attempt<'m, P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> {
    session: Ctx,
    held: Held<'m, P, R, Ctx>,
    /// What the replay cache keeps once the record is Finished: only a record this claim
    /// created, whose expiration is this call's.
    cached: Option<(Fingerprint, Option<DateTime<Utc>>)>,
}

impl<'m, P: ?Sized, R: Send + 'static, Ctx: Clone + Send + Sync + 'static> Attempt<'m, P, R, Ctx> {
    /// The store's session the work runs in (for Postgres, the transaction that records the
    /// result).
    pub fn session(&self) -> &Ctx {
        &self.session
    }

    /// The attempt number: 1 for the first, +1 for each attempt that took the record over.
    pub fn attempt(&self) -> u64 {
        self.held.lease.attempt
    }

    /// The record's target.
    pub fn target(&self) -> &str {
        self.held.record.target()
    }

    /// The record's key.
    pub fn key(&self) -> &str {
        self.held.record.key()
    }

    /// The record's target and key, owned: a clone shares them without a copy.
    pub fn record(&self) -> &SharedRecordId {
        &self.held.record
    }

    /// Records `value` as the result (committing the session with it, for a transactional
    /// store), unless another attempt took the record over ([`Error::Superseded`]) or it
    /// expired meanwhile ([`Error::Expired`]): then the session rolled back.
    ///
    /// A value the codec refuses is recorded done all the same (Finished without a result)
    /// and answered [`Error::Codec`]: the work is done, and a retry must not do it again.
    pub async fn complete<E>(self, value: &R) -> Result<(), Error<E>> {
        // Awaited after the `match`, whose scrutinee would take room across the await.
        let later = match self.complete_at_once(value) {
            Ok(ended) => return ended,
            Err(later) => later,
        };
        later.await
    }

    /// The finish, when the store answers at once; else the boxed future that finishes the
    /// attempt over I/O. Boxed: with a store that answers at once (the memory store) the
    /// future of `complete` holds the attempt and a pointer; a store that answers over I/O
    /// pays one allocation beside its round trip.
    fn complete_at_once<E>(
        self,
        value: &R,
    ) -> AtOnce<Result<(), Error<E>>, impl Future<Output = Result<(), Error<E>>>> {
        let Self {
            session,
            mut held,
            cached,
        } = self;
        held.stop_renewal();
        let manager = held.manager;
        let encoded = manager.codec.encode(value);
        let timer = StoreTimer::start();
        let (id, lease) = (held.id(), held.lease);
        let bytes = encoded.as_deref().ok();
        match manager.repository.complete_now(&session, id, lease, bytes) {
            Some(done) => Ok(completed(held, cached, encoded, timer, done, 0)),
            None => {
                let later = Completing {
                    session,
                    held,
                    cached,
                    encoded,
                    timer,
                };
                Err(Box::pin(later.finish()))
            }
        }
    }

    /// Rolls the session back and records the attempt Failed with `failure` (the next call
    /// runs the work again). A record another attempt took over is left as it is.
    pub async fn fail(self, failure: Failure<'_>) -> Result<(), RepositoryError> {
        // Boxed: a caller that may fail or complete an attempt keeps a small future.
        Box::pin(self.fail_in_store(failure)).await
    }

    async fn fail_in_store(self, failure: Failure<'_>) -> Result<(), RepositoryError> {
        let Self {
            session, mut held, ..
        } = self;
        held.stop_renewal();
        let kind = failure.kind;
        let manager = held.manager;
        let timer = StoreTimer::start();
        let (id, lease) = (held.id(), held.lease);
        let finish = manager.finish_retry.run(held.deadline, || {
            manager.repository.fail(session.clone(), id, lease, failure)
        });
        let (done, retries) = within(&held.observed, finish).await;
        timer.stop(manager.repository.name(), "finish");
        held.observed.retried(retries);
        held.disarm();
        held.report(CallOutcome::of_failure(kind));
        done.map(drop)
    }
}

/// A step's answer when the store gave it at once, else the boxed future that awaits it.
type AtOnce<T, F> = Result<T, Pin<Box<F>>>;

/// An attempt whose store answers its finish over I/O: the part of
/// [`Attempt::complete`] that awaits it.
struct Completing<'m, P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> {
    session: Ctx,
    held: Held<'m, P, R, Ctx>,
    cached: Option<(Fingerprint, Option<DateTime<Utc>>)>,
    encoded: Result<Vec<u8>, BoxError>,
    timer: StoreTimer,
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> Completing<'_, P, R, Ctx> {
    async fn finish<E>(self) -> Result<(), Error<E>> {
        let manager = self.held.manager;
        let bytes = self.encoded.as_deref().ok();
        let (id, lease) = (self.held.id(), self.held.lease);
        let session = &self.session;
        let finish = manager.finish_retry.run(self.held.deadline, || {
            manager
                .repository
                .complete(session.clone(), id, lease, bytes)
        });
        let (done, retries) = within(&self.held.observed, finish).await;
        completed(
            self.held,
            self.cached,
            self.encoded,
            self.timer,
            done,
            retries,
        )
    }
}

/// The end of [`Attempt::complete`], once the store answered `done` (timed by `timer`) after
/// `retries` tries again.
fn completed<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static, E>(
    mut held: Held<'_, P, R, Ctx>,
    cached: Option<(Fingerprint, Option<DateTime<Utc>>)>,
    encoded: Result<Vec<u8>, BoxError>,
    timer: StoreTimer,
    done: Result<Completion, RepositoryError>,
    retries: u32,
) -> Result<(), Error<E>> {
    let manager = held.manager;
    timer.stop(manager.repository.name(), "finish");
    held.observed.retried(retries);
    // A store error leaves the attempt armed: it is failed in the background.
    let done = match done {
        Ok(done) => done,
        Err(error) => return Err(held.ended(Error::Repository(error))),
    };
    held.disarm();
    let ended = match done {
        Completion::Done => {
            if let (Some(cache), Some((fingerprint, expiration)), Ok(bytes)) =
                (&manager.replay_cache, cached, &encoded)
            {
                let now = manager.clock.now();
                let (target, key) = (held.record.target(), held.record.key());
                cache.insert(target, key, fingerprint, bytes, now, expiration);
            }
            match encoded {
                Ok(_) => {
                    held.report(CallOutcome::Executed);
                    return Ok(());
                }
                Err(error) => Error::Codec(error),
            }
        }
        Completion::Superseded => Error::Superseded {
            target: held.record.target().to_owned(),
            key: held.record.key().to_owned(),
        },
        Completion::Expired => Error::Expired {
            target: held.record.target().to_owned(),
            key: held.record.key().to_owned(),
        },
    };
    Err(held.ended(ended))
}

/// The attempt's identity, and a clone of its session until it is finished: dropped before
/// then (a cancelled call), it fails the attempt in the background so the record does not
/// stay Running. The compare-and-set on the attempt makes a late clean-up harmless.
struct Held<'m, P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> {
    manager: &'m Manager<P, R, Ctx>,
    record: SharedRecordId,
    label: Option<Box<str>>,
    lease: Lease,
    armed: Option<Ctx>,
    /// When the attempt's timeout runs out (another call may take over then): finishes are
    /// not tried again past it.
    deadline: Option<tokio::time::Instant>,
    observed: Observed,
    /// Whether the call's outcome was reported (exactly one per call).
    reported: bool,
    /// The task renewing the lease, stopped when the attempt ends.
    renewal: Option<Renewing>,
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> fmt::Debug for Held<'_, P, R, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("target", &self.record.target())
            .field("key", &self.record.key())
            .field("lease", &self.lease)
            .field("armed", &self.armed.is_some())
            .finish_non_exhaustive()
    }
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> Held<'_, P, R, Ctx> {
    fn id(&self) -> RecordId<'_> {
        self.record.id()
    }

    fn disarm(&mut self) {
        self.armed = None;
    }

    /// Stops renewing the lease: the attempt is being finished.
    fn stop_renewal(&mut self) {
        self.renewal = None;
    }

    fn report(&mut self, outcome: CallOutcome) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let subject = Subject {
            target: self.record.target(),
            label: self.label.as_deref().unwrap_or(self.record.target()),
            key: self.record.key(),
            store: self.manager.repository.name(),
        };
        let attempt = Some(self.lease.attempt);
        let kind = EventKind::Outcome(outcome);
        self.observed
            .report(&self.manager.reporting, subject, kind, attempt);
    }

    /// Reports the outcome of `error` and hands it back.
    fn ended<E>(&mut self, error: Error<E>) -> Error<E> {
        self.report(CallOutcome::of_error(&error));
        error
    }
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> Drop for Held<'_, P, R, Ctx> {
    fn drop(&mut self) {
        self.observed.release();
        self.report(CallOutcome::Cancelled);
        let Some(session) = self.armed.take() else {
            return;
        };
        // Without a runtime nothing can reach the store; the timeout frees the record.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repository = Arc::clone(&self.manager.repository);
        // Counted done however the task ends: run to its end, panicked, or dropped unrun by a
        // runtime shutting down (then the record's timeout frees it).
        let cleanup = Cleanup::start(Arc::clone(&self.manager.cleanups));
        let (record, lease) = (self.record.clone(), self.lease);
        runtime.spawn(async move {
            let _cleanup = cleanup;
            let id = record.id();
            // A store fault here leaves the record to its timeout.
            let _ = repository
                .fail(session, id, lease, FailureKind::Cancelled.into())
                .await;
        });
    }
}

/// Runs the operation, its panics caught, whether raised while it makes its future (a
/// synchronous `call`) or while the future runs.
async fn execute<Ctx, O: Operation<Ctx>>(
    operation: O,
    session: Ctx,
) -> Result<Result<O::Output, O::Error>, Box<dyn Any + Send>> {
    let future = std::panic::catch_unwind(AssertUnwindSafe(|| operation.call(session)))?;
    AssertUnwindSafe(future).catch_unwind().await
}

/// `Got panic "<value>"`, the message of [`Error::Panic`].
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    let value = if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "Box<dyn Any>"
    };
    format!("Got panic \"{value}\"")
}

/// One background clean-up, counted from its start until it is dropped.
struct Cleanup(Arc<Cleanups>);

impl Cleanup {
    fn start(cleanups: Arc<Cleanups>) -> Self {
        cleanups.start();
        Self(cleanups)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Counts background clean-ups so [`Manager::flush`] can wait for them.
#[derive(Debug, Default)]
struct Cleanups {
    pending: AtomicUsize,
    idle: Notify,
}

impl Cleanups {
    fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    fn start(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            let mut idle = pin!(idle);
            idle.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe face of [`IdempotencyRepository`], so a manager's type names only its
/// session context, not its store.
trait DynRepository<Ctx>: Renew + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn watch(&self, id: RecordId<'_>) -> Watch;
    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Claim<Ctx>, RepositoryError>>;
    fn claim_now(&self, request: &ClaimRequest<'_>) -> Option<Result<Claim<Ctx>, RepositoryError>>;
    fn complete_now(
        &self,
        session: &Ctx,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Option<Result<Completion, RepositoryError>>;
    fn complete<'a>(
        &'a self,
        session: Ctx,
        id: RecordId<'a>,
        lease: Lease,
        result: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Completion, RepositoryError>>;
    fn fail<'a>(
        &'a self,
        session: Ctx,
        id: RecordId<'a>,
        lease: Lease,
        failure: Failure<'a>,
    ) -> BoxFuture<'a, Result<Completion, RepositoryError>>;
    fn get<'a>(
        &'a self,
        target: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TrackedOperation>, RepositoryError>>;
}

impl<S: IdempotencyRepository> Renew for S {
    fn renew_lease<'a>(
        &'a self,
        id: RecordId<'a>,
        lease: Lease,
        lease_for: Duration,
    ) -> BoxFuture<'a, Result<Renewal, RepositoryError>> {
        Box::pin(IdempotencyRepository::renew(self, id, lease, lease_for))
    }
}

impl<S: IdempotencyRepository> DynRepository<S::Session> for S {
    fn name(&self) -> &'static str {
        IdempotencyRepository::name(self)
    }

    fn watch(&self, id: RecordId<'_>) -> Watch {
        IdempotencyRepository::watch(self, id)
    }

    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Claim<S::Session>, RepositoryError>> {
        Box::pin(IdempotencyRepository::claim(self, request))
    }

    fn claim_now(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Option<Result<Claim<S::Session>, RepositoryError>> {
        IdempotencyRepository::claim_now(self, request)
    }

    fn complete_now(
        &self,
        session: &S::Session,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Option<Result<Completion, RepositoryError>> {
        IdempotencyRepository::complete_now(self, session, id, lease, result)
    }

    fn complete<'a>(
        &'a self,
        session: S::Session,
        id: RecordId<'a>,
        lease: Lease,
        result: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Completion, RepositoryError>> {
        Box::pin(IdempotencyRepository::complete(
            self, session, id, lease, result,
        ))
    }

    fn fail<'a>(
        &'a self,
        session: S::Session,
        id: RecordId<'a>,
        lease: Lease,
        failure: Failure<'a>,
    ) -> BoxFuture<'a, Result<Completion, RepositoryError>> {
        Box::pin(IdempotencyRepository::fail(
            self, session, id, lease, failure,
        ))
    }

    fn get<'a>(
        &'a self,
        target: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TrackedOperation>, RepositoryError>> {
        Box::pin(IdempotencyRepository::get(self, target, key))
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation is a panic.
    #![allow(clippy::panic)]

    use std::convert::Infallible;

    use super::*;
    use crate::{MemoryRepository, MemorySession};

    /// With a store that answers at once, finishing an attempt awaits nothing: the future of
    /// `complete` (and of `fail`) holds the attempt and a pointer, so a caller that embeds it
    /// (an HTTP layer's future per request) stays small.
    #[tokio::test]
    async fn finishing_futures_hold_the_attempt_and_a_pointer() {
        let manager: Manager<Fingerprint, String, MemorySession> =
            Manager::new(MemoryRepository::new());
        let begin = |key| manager.begin::<Infallible>(Call::new("t", key, Fingerprint::of("x")));
        let Ok(Begun::Acquired(attempt)) = begin("completed").await else {
            panic!("the first call runs")
        };
        let held = std::mem::size_of_val(&attempt);
        let value = "done".to_owned();
        let complete = attempt.complete::<Infallible>(&value);
        let size = std::mem::size_of_val(&complete);
        assert!(
            size <= held + 32,
            "complete: {size} bytes for an attempt of {held}"
        );
        assert!(complete.await.is_ok());
        let Ok(Begun::Acquired(attempt)) = begin("failed").await else {
            panic!("the first call runs")
        };
        let fail = attempt.fail(Failure::new(FailureKind::Error, "no"));
        let size = std::mem::size_of_val(&fail);
        assert!(
            size <= held + 64,
            "fail: {size} bytes for an attempt of {held}"
        );
        assert!(fail.await.is_ok());
    }
}
