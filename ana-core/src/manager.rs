//! [`Manager`]: drives one call through claim, execution and finish.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::cache::ReplayCache;
use crate::clock::{self, Clock, SystemClock};
use crate::codec::{Codec, JsonCodec};
use crate::error::Error;
use crate::operation::Operation;
use crate::record::{FailureKind, Fingerprint, Payload, Status, TrackedOperation};
use crate::repository::{
    BoxError, Claim, ClaimRequest, Completion, Failure, IdempotencyRepository, Lease, RecordId,
    RepositoryError,
};

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
/// 1. expired by its own reference time → [`Error::Expired`], storage untouched;
/// 2. one atomic claim; on the record as it stood: other payload → [`Error::PayloadMismatch`],
///    Finished → replay, expired → [`Error::Expired`], held → [`Error::StillRunning`];
/// 3. otherwise the call owns a fresh attempt and runs the operation, panics caught;
/// 4. finish as a compare-and-set on the attempt: Finished, Failed, [`Error::Superseded`] or
///    [`Error::Expired`].
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
            payload: PhantomData,
        }
    }
}

impl<P: ?Sized, R, Ctx> fmt::Debug for Manager<P, R, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("clock", &self.clock)
            .field("pending_cleanups", &self.cleanups.pending())
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

    /// Like [`call`](Self::call), and says whether the result was replayed.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` copies `operation` into a local beside the argument, and every \
                  future above this one would carry both; the block holds it once"
    )]
    pub fn run<O>(
        &self,
        operation: O,
    ) -> impl Future<Output = Result<Outcome<R>, Error<O::Error>>> + use<'_, O, P, R, Ctx>
    where
        O: Operation<Ctx, Payload = P, Output = R>,
    {
        async move {
            let now = self.clock.now();
            let reference_time = operation.reference_time().unwrap_or(now);
            let expiration = operation
                .expiration()
                .map(|e| clock::add(reference_time, e));
            if expiration.is_some_and(|expiration| now > expiration) {
                return Err(Error::Expired {
                    target: operation.target().to_owned(),
                    key: operation.key().to_owned(),
                });
            }

            let fingerprint = operation.payload().fingerprint();
            if let Some(hit) = self
                .replay_cache
                .as_ref()
                .and_then(|cache| cache.get(operation.target(), operation.key(), now))
            {
                // The same checks, in the same order, as on the Finished record in the store.
                if hit.fingerprint != fingerprint {
                    return Err(Error::PayloadMismatch {
                        target: operation.target().to_owned(),
                        key: operation.key().to_owned(),
                    });
                }
                return self.replay(&hit.result);
            }
            // A statement of its own: the claim's answer is not kept while the operation
            // runs.
            let (lease, session) = match self
                .repository
                .claim(&ClaimRequest {
                    target: operation.target(),
                    key: operation.key(),
                    fingerprint,
                    reference_time,
                    timeout: operation.timeout(),
                    expiration,
                })
                .await?
            {
                Claim::Existing { record, now } => {
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
                    return self.verdict(record, fingerprint, now);
                }
                Claim::Acquired { lease, session } => (lease, session),
            };
            // Owned copies only now: the operation goes into its own call.
            let target = operation.target().to_owned();
            let key = operation.key().to_owned();
            let id = RecordId::new(&target, &key);
            // A record this claim created has this call's expiration; one taken over keeps
            // its first call's, which only the store knows: only the first is cached.
            // (Attempt 1 on a taken-over record happens only for a Ready record with
            // attempt 0, which ana never writes; `restore` can.)
            let cached = (lease.attempt == 1).then_some((fingerprint, expiration));

            // From here until the finish is acknowledged, dropping this future fails the
            // attempt in the background so the record does not stay Running.
            let mut guard = CancelGuard {
                manager: self,
                id,
                lease,
                session: Some(session.clone()),
            };
            // Each step's answer is a statement of its own, so that no future above this one
            // keeps it beside the next step's.
            let ran = {
                // A panic is caught while the operation makes its future (a synchronous
                // `call`) as well as while the future runs. In a block: the outcome is not
                // kept while the record is finished.
                let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    operation.call(session.clone())
                })) {
                    Ok(future) => CatchUnwind { future }.await,
                    Err(panic) => Err(panic),
                };
                self.settle(outcome)
            };
            let (value, bytes) = match ran {
                Ok(ran) => ran,
                Err((kind, message, error)) => {
                    let failure = Failure::new(kind, &message);
                    let done = self.repository.fail(session, id, lease, failure).await;
                    guard.disarm();
                    return match done {
                        // A failed attempt reports its own error, even when it had lost the
                        // record.
                        Ok(_) => Err(error),
                        Err(store) => match error {
                            // The operation's own outcome matters most to the caller; the
                            // record stays Running until its timeout.
                            Error::Operation(_) | Error::Panic { .. } => Err(error),
                            _ => Err(Error::Repository(store)),
                        },
                    };
                }
            };
            let done = self
                .repository
                .complete(session, id, lease, bytes.as_deref())
                .await?;
            guard.disarm();
            match done {
                Completion::Done => {
                    if let (Some(cache), Some((fingerprint, expiration)), Some(bytes)) =
                        (&self.replay_cache, cached, &bytes)
                    {
                        let now = self.clock.now();
                        cache.insert(&target, &key, fingerprint, bytes, now, expiration);
                    }
                    value.map(Outcome::Executed).map_err(Error::Codec)
                }
                Completion::Superseded => Err(superseded(id)),
                Completion::Expired => Err(expired(id)),
            }
        }
    }

    /// What an attempt's outcome records: its value (or why it could not be encoded) and the
    /// bytes to store, or the failure to store on the record and the error to return.
    ///
    /// A value the codec refuses is still a success: the work is done, and a retry must not do
    /// it again. Its record turns Finished without a result, and every call for the key is
    /// answered [`Error::Codec`].
    #[expect(
        clippy::type_complexity,
        reason = "one private step's three outcomes, spelled out"
    )]
    fn settle<E: fmt::Display>(
        &self,
        outcome: Result<Result<R, E>, Box<dyn Any + Send>>,
    ) -> Result<(Result<R, BoxError>, Option<Vec<u8>>), (FailureKind, String, Error<E>)> {
        match outcome {
            Ok(Ok(value)) => match self.codec.encode(&value) {
                Ok(bytes) => Ok((Ok(value), Some(bytes))),
                Err(error) => Ok((Err(error), None)),
            },
            Ok(Err(error)) => Err((
                FailureKind::Error,
                error.to_string(),
                Error::Operation(error),
            )),
            Err(panic) => {
                let message = format!("Got panic \"{}\"", panic_message(&*panic));
                Err((
                    FailureKind::Panic,
                    message.clone(),
                    Error::Panic { message },
                ))
            }
        }
    }

    /// A stored result, decoded for a replay.
    fn replay<E>(&self, bytes: &[u8]) -> Result<Outcome<R>, Error<E>> {
        self.codec
            .decode(bytes)
            .map(Outcome::Replayed)
            .map_err(Error::Codec)
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
    ) -> Result<Outcome<R>, Error<E>> {
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

fn superseded<E>(id: RecordId<'_>) -> Error<E> {
    Error::Superseded {
        target: id.target.to_owned(),
        key: id.key.to_owned(),
    }
}

fn expired<E>(id: RecordId<'_>) -> Error<E> {
    Error::Expired {
        target: id.target.to_owned(),
        key: id.key.to_owned(),
    }
}

pin_project_lite::pin_project! {
    /// Polls `future`, turning a panic into `Err` with its payload.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "Box<dyn Any>"
    }
}

/// Fails the attempt in the background if the call's future is dropped before its finish was
/// acknowledged. The compare-and-set on the attempt makes a late clean-up harmless.
struct CancelGuard<'a, P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> {
    manager: &'a Manager<P, R, Ctx>,
    id: RecordId<'a>,
    lease: Lease,
    session: Option<Ctx>,
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> CancelGuard<'_, P, R, Ctx> {
    fn disarm(&mut self) {
        self.session = None;
    }
}

impl<P: ?Sized, R, Ctx: Clone + Send + Sync + 'static> Drop for CancelGuard<'_, P, R, Ctx> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // Without a runtime nothing can reach the store; the timeout frees the record.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repository = Arc::clone(&self.manager.repository);
        let cleanups = Arc::clone(&self.manager.cleanups);
        let (target, key, lease) = (
            self.id.target.to_owned(),
            self.id.key.to_owned(),
            self.lease,
        );
        // Counted done however the task ends: run to its end, panicked, or dropped unrun by a
        // runtime shutting down (then the record's timeout frees it).
        let cleanup = Cleanup::start(cleanups);
        runtime.spawn(async move {
            let _cleanup = cleanup;
            let id = RecordId::new(&target, &key);
            let failure = FailureKind::Cancelled.into();
            // A store fault here leaves the record to its timeout.
            let _ = repository.fail(session, id, lease, failure).await;
        });
    }
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
trait DynRepository<Ctx>: Send + Sync + 'static {
    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Claim<Ctx>, RepositoryError>>;
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

impl<S: IdempotencyRepository> DynRepository<S::Session> for S {
    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Claim<S::Session>, RepositoryError>> {
        Box::pin(IdempotencyRepository::claim(self, request))
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
