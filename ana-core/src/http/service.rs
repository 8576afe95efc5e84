//! [`IdempotencyService`]: the framework-neutral driver the web adapters wrap.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap};
use http::request::Parts;
use http::{Request, Response, StatusCode};

use super::config::{IdempotencyConfig, RequestValues};
use super::grpc::is_grpc;
use super::problem::Rejection;
use super::recorded::{RecordedResponse, RecordedResponseCodec};
use crate::clock::Clock;
use crate::error::Error;
use crate::manager::{Manager, Outcome};
use crate::operation::operation;
use crate::record::Fingerprint;
use crate::repository::{BoxError, IdempotencyRepository};

/// The manager type the HTTP layer drives.
pub type HttpManager<Ctx> = Manager<Fingerprint, RecordedResponse, Ctx>;

/// A response body as the adapter hands it over: fully read (at most the stored-response
/// limit), or too large to store and passed on as the adapter's own body.
#[derive(Debug)]
pub enum ResponseBody<B> {
    /// The whole body.
    Full(Bytes),
    /// The whole body and the trailers that ended it (a gRPC answer: its status is there).
    WithTrailers {
        /// The body's data.
        data: Bytes,
        /// The trailers.
        trailers: HeaderMap,
    },
    /// A body over the stored-response limit, whole (the adapter re-attaches what it read).
    Streaming(B),
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::Full(bytes)
    }
}

/// Given to the handler in the request extensions: the store's session (for Postgres, the
/// transaction that will record the response), the client's key and the target.
#[derive(Clone, Debug)]
pub struct IdempotencyContext<Ctx> {
    session: Ctx,
    key: String,
    target: String,
}

impl<Ctx> IdempotencyContext<Ctx> {
    /// The store's session for this attempt.
    pub fn session(&self) -> &Ctx {
        &self.session
    }

    /// The session, by value.
    pub fn into_session(self) -> Ctx {
        self.session
    }

    /// The idempotency key the client sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operation's target (`[POST]/payments`).
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Set in the request extensions inside an attempt, so that a nested layer (an app-wide layer
/// and a route's own) passes the request through: one request is one attempt, under the
/// outermost layer's settings.
#[derive(Clone, Copy, Debug)]
struct InsideAttempt;

/// What to do with a request, decided from its head before its body is read.
#[derive(Debug)]
pub enum Plan {
    /// No key and keys are optional, or an outer layer already runs this request as an
    /// attempt: call the handler as if the layer were not there.
    PassThrough,
    /// Read the body (at most [`IdempotencyConfig::max_request_body`] bytes, else
    /// [`Rejection::PayloadTooLarge`]) and call [`IdempotencyService::execute`].
    Idempotent(Prepared),
}

/// The idempotency values of a request, read from its head.
#[derive(Debug)]
pub struct Prepared {
    values: RequestValues,
}

impl Prepared {
    /// The key the client sent.
    pub fn key(&self) -> &str {
        &self.values.key
    }

    /// The target.
    pub fn target(&self) -> &str {
        &self.values.target
    }
}

/// The error an attempt records when the handler's status is not recordable.
#[derive(Debug)]
struct NotRecorded(StatusCode);

impl fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "The handler answered {}; the response was not recorded.",
            self.0
        )
    }
}

/// The HTTP rules of SPEC section 3 over a [`Manager`], independent of any web framework.
///
/// An adapter (`ana-axum`, `ana-actix`) calls, per request:
/// 1. [`plan`](Self::plan) on the request head: a [`Rejection`] (400, 413 by
///    `Content-Length`), [`Plan::PassThrough`], or [`Plan::Idempotent`];
/// 2. reads the body up to [`IdempotencyConfig::max_request_body`] (413 above it);
/// 3. [`execute`](Self::execute) with a `next` that runs its handler and reads the response
///    body up to [`IdempotencyConfig::max_stored_response`].
///
/// [`handle`](Self::handle) does all three for an already-read request. Cheap to clone.
///
/// ```
/// use bytes::Bytes;
/// use ana_core::MemoryRepository;
/// use ana_core::http::{IdempotencyService, ResponseBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = IdempotencyService::new(MemoryRepository::new());
/// let request = || {
///     http::Request::post("/hello")
///         .header("x-idempotency-key", "k1")
///         .body(Bytes::from_static(b"hi"))
///         .unwrap()
/// };
/// let handler = |_parts, _body| async {
///     http::Response::new(ResponseBody::<()>::Full(Bytes::from_static(b"Hello k1!")))
/// };
/// let first = service.handle(request(), handler).await;
/// let again = service.handle(request(), handler).await;
/// assert!(first.headers().get("idempotent-replayed").is_none());
/// assert_eq!(again.headers()["idempotent-replayed"], "true");
/// # }
/// ```
pub struct IdempotencyService<Ctx> {
    // One reference count for a clone per request (not one per part of the manager): on a
    // multi-threaded server each is a cache line the cores take from one another.
    inner: Arc<Shared<Ctx>>,
}

struct Shared<Ctx> {
    manager: HttpManager<Ctx>,
    config: IdempotencyConfig,
}

impl<Ctx> Clone for IdempotencyService<Ctx> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Ctx> fmt::Debug for IdempotencyService<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("manager", &self.inner.manager)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> IdempotencyService<Ctx> {
    /// A service over `repository` with the default configuration.
    pub fn new<S>(repository: S) -> Self
    where
        S: IdempotencyRepository<Session = Ctx>,
    {
        Self::from_manager(Manager::with_codec(repository, RecordedResponseCodec))
    }

    /// A service over an existing manager (to share it, or to set its clock).
    pub fn from_manager(manager: HttpManager<Ctx>) -> Self {
        Self {
            inner: Arc::new(Shared {
                manager,
                config: IdempotencyConfig::default(),
            }),
        }
    }

    /// Replaces the configuration; the manager (and store) stay shared with `self`'s clones.
    #[must_use]
    pub fn with_config(self, config: IdempotencyConfig) -> Self {
        Self {
            inner: Arc::new(Shared {
                manager: self.inner.manager.clone(),
                config,
            }),
        }
    }

    /// Sets the clock of the expiry check made before the store is touched.
    #[must_use]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self {
            inner: Arc::new(Shared {
                manager: self.inner.manager.clone().with_clock(clock),
                config: self.inner.config.clone(),
            }),
        }
    }

    /// Answers repeated replays from `cache`, without a round trip to the store (see
    /// [`ReplayCache`](crate::ReplayCache) for what it keeps, and for how long). Worth it in
    /// front of Postgres or Redis.
    #[must_use]
    pub fn with_replay_cache(self, cache: crate::ReplayCache) -> Self {
        Self {
            inner: Arc::new(Shared {
                manager: self.inner.manager.clone().with_replay_cache(cache),
                config: self.inner.config.clone(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.inner.config
    }

    /// The manager.
    pub fn manager(&self) -> &HttpManager<Ctx> {
        &self.inner.manager
    }

    /// Decides from the request head what to do (see the type's docs).
    pub fn plan(&self, parts: &Parts) -> Result<Plan, Rejection> {
        if parts.extensions.get::<InsideAttempt>().is_some() {
            return Ok(Plan::PassThrough);
        }
        let Some(values) = self.inner.config.read(parts, self.inner.manager.now())? else {
            return Ok(Plan::PassThrough);
        };
        let limit = self.inner.config.max_request_body();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        Ok(Plan::Idempotent(Prepared { values }))
    }

    /// Runs `next` at most once for the request's key and answers: the handler's own response
    /// on the run that executed it (every header, `Set-Cookie` included), the recorded response
    /// with `Idempotent-Replayed: true` on a replay (its trailers too), or a rejection (a
    /// problem response, or a gRPC status for a gRPC call).
    ///
    /// `next(parts, body)` must call the handler with the parts (they carry an
    /// [`IdempotencyContext`] in their extensions) and return its response, the body read up
    /// to [`IdempotencyConfig::max_stored_response`] bytes. A panic in `next` is caught: the
    /// attempt is recorded Failed and the caller gets a 500 problem.
    // Not an `async fn`: the request goes into the operation before the future is made; an
    // `async fn` would keep a copy of it in the future too, and in the adapter's above it.
    pub fn execute<B, F, Fut>(
        &self,
        prepared: Prepared,
        mut parts: Parts,
        body: Bytes,
        next: F,
    ) -> impl Future<Output = Response<ResponseBody<B>>> + use<'_, B, F, Fut, Ctx>
    where
        B: Send + 'static,
        F: FnOnce(Parts, Bytes) -> Fut + Send,
        Fut: Future<Output = Response<ResponseBody<B>>> + Send,
    {
        let mut values = prepared.values;
        let grpc = is_grpc(&parts.headers);
        let fingerprint = self.inner.config.fingerprint(&parts, &body);
        let handler_response: Slot<B> = Arc::default();
        let slot = Arc::clone(&handler_response);
        let config = self.inner.config.clone();
        let (key, target) = (values.key.clone(), values.target.clone());
        let op = operation(
            values.target.clone(),
            // Only the operation needs it.
            std::mem::take(&mut values.scoped_key),
            fingerprint,
            move |session: Ctx| {
                parts.extensions.insert(InsideAttempt);
                parts.extensions.insert(IdempotencyContext {
                    session,
                    key,
                    target,
                });
                // Boxed: the handler's future lives on the heap only for the calls that run
                // it, and every future above it (the manager's, this one, the adapter's)
                // stays small. `next` is called first, so the box holds its future and the
                // recording's two handles, nothing else.
                Box::pin(Then {
                    future: next(parts, body),
                    then: Some(move |response| record(response, &config, &slot)),
                })
            },
        );
        // The configuration's zero stands for "never", the operation's for zero.
        let op = if values.timeout.is_zero() {
            op
        } else {
            op.timeout(values.timeout)
        };
        let op = if values.expiration.is_zero() {
            op
        } else {
            op.expiration(values.expiration)
        };
        let op = match values.reference_time {
            Some(at) => op.reference_time(at),
            None => op,
        };
        // `Then`, not an `async` block: the block would hold the operation beside the
        // manager's future, which holds it too.
        Then {
            future: self.inner.manager.run(op),
            then: Some(move |outcome| self.respond(outcome, values, grpc, &handler_response)),
        }
    }

    /// The answer to a request once the manager has run or replayed it.
    fn respond<B>(
        &self,
        outcome: Result<Outcome<RecordedResponse>, Error<NotRecorded>>,
        values: RequestValues,
        grpc: bool,
        handler_response: &Slot<B>,
    ) -> Response<ResponseBody<B>> {
        let take = || {
            handler_response
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        let rejection = match outcome {
            Ok(Outcome::Executed(_)) | Err(Error::Operation(NotRecorded(_))) => match take() {
                Some(response) => return response,
                None => internal("the handler's response went missing"),
            },
            Ok(Outcome::Replayed(recorded)) if recorded.is_body_stored() => {
                return match recorded.into_replay() {
                    (replay, Some(trailers)) => {
                        replay.map(|data| ResponseBody::WithTrailers { data, trailers })
                    }
                    (replay, None) => replay.map(ResponseBody::Full),
                };
            }
            Ok(Outcome::Replayed(_)) => Rejection::ResponseNotStored { key: values.key },
            Err(error) => self.rejection(error, values),
        };
        rejection.to_response_as(grpc).map(ResponseBody::Full)
    }

    /// [`plan`](Self::plan), the body limit and [`execute`](Self::execute) for a request whose
    /// body is already read; a request without a key (when keys are optional) goes to `next`
    /// untouched.
    pub async fn handle<B, F, Fut>(
        &self,
        request: Request<Bytes>,
        next: F,
    ) -> Response<ResponseBody<B>>
    where
        B: Send + 'static,
        F: FnOnce(Parts, Bytes) -> Fut + Send,
        Fut: Future<Output = Response<ResponseBody<B>>> + Send,
    {
        let (parts, body) = request.into_parts();
        match self.plan(&parts) {
            Err(rejection) => rejection
                .to_response_for(&parts.headers)
                .map(ResponseBody::Full),
            Ok(Plan::PassThrough) => next(parts, body).await,
            Ok(Plan::Idempotent(_)) if body.len() > self.inner.config.max_request_body() => {
                Rejection::PayloadTooLarge {
                    limit: self.inner.config.max_request_body(),
                }
                .to_response_for(&parts.headers)
                .map(ResponseBody::Full)
            }
            Ok(Plan::Idempotent(prepared)) => self.execute(prepared, parts, body, next).await,
        }
    }

    fn rejection(&self, error: Error<NotRecorded>, values: RequestValues) -> Rejection {
        let RequestValues { key, target, .. } = values;
        match error {
            Error::PayloadMismatch { .. } => Rejection::PayloadMismatch { target, key },
            Error::StillRunning { retry_after, .. } => Rejection::StillRunning {
                target,
                key,
                retry_after: retry_after
                    .unwrap_or(Duration::MAX)
                    .min(self.inner.config.max_still_running_retry_after()),
            },
            Error::Expired { .. } => Rejection::Expired { target, key },
            Error::Superseded { .. } => Rejection::Superseded { target, key },
            Error::Panic { message } => Rejection::HandlerPanicked { message },
            Error::Repository(error) if error.is_transient() => Rejection::StoreUnavailable {
                retry_after: self.inner.config.unavailable_retry_after(),
                source: Arc::new(error),
            },
            Error::Repository(error) => Rejection::Internal {
                source: Arc::new(Box::new(error)),
            },
            Error::Codec(error) => Rejection::Internal {
                source: Arc::new(error),
            },
            Error::Operation(NotRecorded(status)) => {
                internal(format!("unexpected unrecorded status {status}"))
            }
        }
    }
}

/// Where the handler's own response waits while the manager records its stored form.
type Slot<B> = Arc<Mutex<Option<Response<ResponseBody<B>>>>>;

pin_project_lite::pin_project! {
    /// `future`, then `then` applied to its output.
    struct Then<Fut, F> {
        #[pin]
        future: Fut,
        then: Option<F>,
    }
}

impl<Fut, F, T> Future for Then<Fut, F>
where
    Fut: Future,
    F: FnOnce(Fut::Output) -> T,
{
    type Output = T;

    #[expect(
        clippy::panic,
        reason = "polled again after it answered: a caller's bug, which an `async fn` also \
                  answers with a panic"
    )]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.project();
        let output = ready!(this.future.poll(cx));
        match this.then.take() {
            Some(then) => Poll::Ready(then(output)),
            None => panic!("`Then` polled after completion"),
        }
    }
}

/// The stored form of the handler's `response` (`Err` when its status is not recordable); the
/// response itself goes to `slot`, for the caller.
fn record<B>(
    response: Response<ResponseBody<B>>,
    config: &IdempotencyConfig,
    slot: &Slot<B>,
) -> Result<RecordedResponse, NotRecorded> {
    let (head, body) = response.into_parts();
    let allowed = config.replay_headers();
    let limit = config.max_stored_response();
    let (recorded, trailers) = match &body {
        ResponseBody::Full(data) if data.len() <= limit => (
            RecordedResponse::new(head.status, &head.headers, allowed, data.clone()),
            None,
        ),
        ResponseBody::WithTrailers { data, trailers } if data.len() <= limit => (
            RecordedResponse::new(head.status, &head.headers, allowed, data.clone())
                .with_trailers(trailers, allowed),
            Some(trailers),
        ),
        ResponseBody::WithTrailers { trailers, .. } => (
            RecordedResponse::without_body(head.status, &head.headers, allowed),
            Some(trailers),
        ),
        ResponseBody::Full(_) | ResponseBody::Streaming(_) => (
            RecordedResponse::without_body(head.status, &head.headers, allowed),
            None,
        ),
    };
    let status = head.status;
    let recordable = config.is_recordable_response(status, &head.headers, trailers);
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Response::from_parts(head, body));
    if recordable {
        Ok(recorded)
    } else {
        Err(NotRecorded(status))
    }
}

fn internal(message: impl Into<String>) -> Rejection {
    let source: BoxError = message.into().into();
    Rejection::Internal {
        source: Arc::new(source),
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation is a panic.
    #![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::memory::MemoryRepository;
    use crate::record::Status;

    fn request(key: &str) -> Request<Bytes> {
        Request::post("/pay")
            .header("x-idempotency-key", key)
            .body(Bytes::from_static(b"{}"))
            .unwrap()
    }

    /// `next` panicking before it returns its future (a synchronous handler, a service whose
    /// `call` panics) is caught like a panic inside the future: a 500 problem, the attempt
    /// recorded Failed.
    #[tokio::test]
    async fn a_panic_before_the_handlers_future_is_a_500() {
        let service = IdempotencyService::new(MemoryRepository::new());
        let response = service
            .handle(
                request("k"),
                |_parts, _body| -> std::future::Ready<Response<ResponseBody<()>>> {
                    panic!("synchronous")
                },
            )
            .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let record = service
            .manager()
            .get("[POST]/pay", &super::super::config::scoped_key(None, "k"))
            .await
            .unwrap()
            .expect("the record");
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.error.as_deref(), Some("Got panic \"synchronous\""));
    }
}
