//! [`Engine`]: the framework-neutral driver the web adapters wrap, and the [`Outcome`] it
//! hands back.

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, HeaderMap};
use http::request::Parts;
use http::{Extensions, Request, Response, StatusCode};

use crate::config::{IdempotencyConfig, RequestValues, client_key};
use crate::grpc::is_grpc;
use crate::problem::Rejection;
use crate::recorded::{RecordedResponse, RecordedResponseCodec};
use ana_core::{
    Begun, BoxError, Call, Clock, Error, Failure, FailureKind, Fingerprint, IdempotencyRepository,
    Manager, SharedRecordId,
};

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

/// What the engine made of a request that carried a key: the one value an adapter turns into
/// its framework's response.
#[derive(Debug)]
pub enum Outcome<B> {
    /// The handler ran for this request: its own response, every header (`Set-Cookie`
    /// included). Recorded, unless its status is not recordable (then the attempt is Failed
    /// and a retry runs again).
    Executed(Response<ResponseBody<B>>),
    /// An earlier run's recorded response, with `Idempotent-Replayed: true` (and its
    /// trailers, when it had some).
    Replayed(Response<ResponseBody<B>>),
    /// Refused, or the attempt could not be recorded: a problem response (a gRPC status for
    /// a gRPC call), the typed [`Rejection`] in its extensions.
    Rejected(Response<Bytes>),
}

impl<B> Outcome<B> {
    /// The response to send.
    pub fn into_response(self) -> Response<ResponseBody<B>> {
        match self {
            Self::Executed(response) | Self::Replayed(response) => response,
            Self::Rejected(response) => response.map(ResponseBody::Full),
        }
    }

    /// Why the request was refused, for a rejected one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(response) => response.extensions().get::<Rejection>(),
            Self::Executed(_) | Self::Replayed(_) => None,
        }
    }
}

/// Given to the handler in the request extensions (the adapters' `Attempt` extractors read
/// it): the store's session (for Postgres, the transaction that will record the response),
/// the client's key and the target.
#[derive(Clone, Debug)]
pub struct Attempt<Ctx> {
    session: Ctx,
    /// The record's target and key (`<scope hash>:<client key>`), shared with the manager's
    /// attempt.
    record: SharedRecordId,
}

impl<Ctx> Attempt<Ctx> {
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
        client_key(self.record.key())
    }

    /// The operation's target (`[POST]/payments`).
    pub fn target(&self) -> &str {
        self.record.target()
    }
}

/// The route a request was matched to (`[POST]/payments/{id}`), set in its extensions by the
/// adapter when [`Engine::reports_labels`]: the label of its calls in metrics and events,
/// bounded where the target (the path itself) is not.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub std::borrow::Cow<'static, str>);

impl RouteLabel {
    /// `[METHOD]route`, e.g. `[POST]/payments/{id}`.
    pub fn new(method: &http::Method, route: &str) -> Self {
        let method = method.as_str();
        let mut label = String::with_capacity(method.len() + route.len() + 2);
        label.push('[');
        label.push_str(method);
        label.push(']');
        label.push_str(route);
        Self(label.into())
    }
}

/// Set in the request extensions inside an attempt, so that a nested layer (an app-wide layer
/// and a route's own) passes the request through: one request is one attempt, under the
/// outermost layer's settings.
#[derive(Clone, Copy, Debug)]
pub struct InsideAttempt;

/// What to do with a request, decided from its head before its body is read.
#[derive(Debug)]
pub enum Plan {
    /// No key and keys are optional, or an outer layer already runs this request as an
    /// attempt: call the handler as if the layer were not there.
    PassThrough,
    /// Read the body (at most [`IdempotencyConfig::max_request_body`] bytes, else
    /// [`Rejection::PayloadTooLarge`]) and call [`Engine::begin`].
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
        self.values.key()
    }

    /// The target.
    pub fn target(&self) -> &str {
        self.values.names.target()
    }
}

/// The error text an attempt records when the handler's status is not recordable.
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

/// The HTTP rules of the [crate docs](crate) over a [`Manager`], independent of any web
/// framework.
///
/// An adapter (`ana-axum`, `ana-actix`) calls, per request:
/// 1. [`plan`](Self::plan) on the request head: a [`Rejection`] (400, 413 by
///    `Content-Length`), [`Plan::PassThrough`], or [`Plan::Idempotent`];
/// 2. reads the body up to [`IdempotencyConfig::max_request_body`] (413 above it);
/// 3. [`begin`](Self::begin): the [`Outcome`] at once (a replay, a rejection), or the
///    [`Claimed`] attempt, whose [`run`](Claimed::run) calls the handler and records its
///    response (an adapter that must call its handler itself uses
///    [`enter`](Claimed::enter), [`finish`](Claimed::finish) and
///    [`panicked`](Claimed::panicked)).
///
/// [`handle`](Self::handle) does all three for an already-read request. Cheap to clone.
///
/// ```
/// use bytes::Bytes;
/// use ana_core::MemoryRepository;
/// use ana_http::{Engine, ResponseBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let engine = Engine::new(MemoryRepository::new());
/// let request = || {
///     http::Request::post("/hello")
///         .header("x-idempotency-key", "k1")
///         .body(Bytes::from_static(b"hi"))
///         .unwrap()
/// };
/// let handler = |_parts, _body| async {
///     http::Response::new(ResponseBody::<()>::Full(Bytes::from_static(b"Hello k1!")))
/// };
/// let first = engine.handle(request(), handler).await;
/// let again = engine.handle(request(), handler).await;
/// assert!(first.headers().get("idempotent-replayed").is_none());
/// assert_eq!(again.headers()["idempotent-replayed"], "true");
/// # }
/// ```
pub struct Engine<Ctx> {
    // One reference count for a clone per request (not one per part of the manager): on a
    // multi-threaded server each is a cache line the cores take from one another.
    inner: Arc<Shared<Ctx>>,
}

struct Shared<Ctx> {
    manager: HttpManager<Ctx>,
    config: IdempotencyConfig,
}

impl<Ctx> Clone for Engine<Ctx> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Ctx> fmt::Debug for Engine<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("manager", &self.inner.manager)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> Engine<Ctx> {
    /// An engine over `repository` with the default configuration.
    pub fn new<S>(repository: S) -> Self
    where
        S: IdempotencyRepository<Session = Ctx>,
    {
        Self::from_manager(Manager::with_codec(repository, RecordedResponseCodec))
    }

    /// An engine over an existing manager (to share it, or to set its clock).
    pub fn from_manager(manager: HttpManager<Ctx>) -> Self {
        Self::from_parts(manager, IdempotencyConfig::default())
    }

    fn from_parts(manager: HttpManager<Ctx>, config: IdempotencyConfig) -> Self {
        // The configuration's floor is the one requests meet.
        let manager = manager.with_min_timeout(config.min_timeout());
        let manager = match config.max_lease() {
            Some(max) => manager.with_max_lease(max),
            None => manager,
        };
        Self {
            inner: Arc::new(Shared { manager, config }),
        }
    }

    /// Replaces the configuration; the manager (and store) stay shared with `self`'s clones.
    #[must_use]
    pub fn with_config(self, config: IdempotencyConfig) -> Self {
        Self::from_parts(self.inner.manager.clone(), config)
    }

    /// Sets the clock of the expiry check made before the store is touched.
    #[must_use]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let manager = self.inner.manager.clone().with_clock(clock);
        Self::from_parts(manager, self.inner.config.clone())
    }

    /// Answers repeated replays from `cache`, without a round trip to the store (see
    /// [`ReplayCache`](ana_core::ReplayCache) for what it keeps, and for how long). Worth it
    /// in front of Postgres or Redis.
    #[must_use]
    pub fn with_replay_cache(self, cache: ana_core::ReplayCache) -> Self {
        let manager = self.inner.manager.clone().with_replay_cache(cache);
        Self::from_parts(manager, self.inner.config.clone())
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.inner.config
    }

    /// The manager.
    pub fn manager(&self) -> &HttpManager<Ctx> {
        &self.inner.manager
    }

    /// Whether a [`RouteLabel`] in the request's extensions is read (by the manager's event
    /// hook or its metrics): an adapter makes one only then.
    pub fn reports_labels(&self) -> bool {
        self.inner.manager.reports_labels()
    }

    /// Decides from the request head what to do (see the type's docs).
    pub fn plan(&self, parts: &Parts) -> Result<Plan, Rejection> {
        if parts.extensions.get::<InsideAttempt>().is_some() {
            return Ok(Plan::PassThrough);
        }
        let Some(values) = self.inner.config.read(parts, || self.inner.manager.now())? else {
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

    /// Claims the request's key: the [`Outcome`] at once when the handler must not run (a
    /// replay, or a rejection: another payload, still running, expired, store down), else the
    /// [`Claimed`] attempt that runs it.
    pub async fn begin<B>(
        &self,
        prepared: Prepared,
        parts: &Parts,
        body: &[u8],
    ) -> Result<Claimed<'_, Ctx>, Outcome<B>> {
        // Borrowed, not moved: a local copy would take its room in the future beside the
        // argument's.
        let values = &prepared.values;
        let grpc = is_grpc(&parts.headers);
        let mut call = Call::new(
            values.names.target(),
            values.names.scoped_key(),
            self.inner.config.fingerprint(parts, body),
        )
        .reference_time(values.reference_time)
        .timeout(values.timeout)
        .expiration(values.expiration)
        .wait(self.inner.config.wait(&parts.headers));
        if let Some(RouteLabel(label)) = parts.extensions.get::<RouteLabel>() {
            call = call.label(label);
        }
        let begun = self.inner.manager.begin::<Infallible>(call).await;
        let wait = self.inner.config.wait(&parts.headers);
        let attempt = match begun {
            Ok(Begun::Acquired(attempt)) => attempt,
            Ok(Begun::Replayed(recorded)) => {
                return Err(applied(replay(recorded, values.key(), grpc), wait));
            }
            Err(error) => {
                let key = values.key().to_owned();
                let target = values.names.target().to_owned();
                let rejected = self.reject(error, key, target, grpc);
                return Err(applied(rejected, wait));
            }
        };
        Ok(Claimed {
            engine: self,
            context: Attempt {
                session: attempt.session().clone(),
                record: attempt.record().clone(),
            },
            attempt,
            grpc,
        })
    }

    /// [`plan`](Self::plan), the body limit, [`begin`](Self::begin) and
    /// [`Claimed::run`] for a request whose body is already read; a request without a key
    /// (when keys are optional) goes to `next` untouched.
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
        let limit = self.inner.config.max_request_body();
        let prepared = match self.plan(&parts) {
            Err(rejection) => return rejected(&rejection, &parts.headers),
            Ok(Plan::PassThrough) => return next(parts, body).await,
            Ok(Plan::Idempotent(_)) if body.len() > limit => {
                return rejected(&Rejection::PayloadTooLarge { limit }, &parts.headers);
            }
            Ok(Plan::Idempotent(prepared)) => prepared,
        };
        let outcome = match self.begin(prepared, &parts, &body).await {
            Ok(claimed) => {
                let next = |parts, body| next(parts, body).map(Ok::<_, Infallible>);
                match claimed.run(parts, body, next).await {
                    Ok(outcome) => outcome,
                    Err(never) => match never {},
                }
            }
            Err(outcome) => outcome,
        };
        outcome.into_response()
    }

    fn reject<B>(
        &self,
        error: Error<Infallible>,
        key: String,
        target: String,
        grpc: bool,
    ) -> Outcome<B> {
        let config = &self.inner.config;
        let rejection = match error {
            Error::PayloadMismatch { .. } => Rejection::PayloadMismatch { target, key },
            Error::StillRunning { retry_after, .. } => Rejection::StillRunning {
                target,
                key,
                retry_after: retry_after
                    .unwrap_or(Duration::MAX)
                    .min(config.max_still_running_retry_after()),
            },
            Error::Expired { .. } => Rejection::Expired { target, key },
            Error::Superseded { .. } => Rejection::Superseded { target, key },
            Error::Panic { message } => Rejection::HandlerPanicked { message },
            Error::Repository(error) if error.is_transient() => Rejection::StoreUnavailable {
                retry_after: config.unavailable_retry_after(),
                source: Arc::new(error),
            },
            Error::Repository(error) => internal(error),
            Error::Codec(error) => Rejection::Internal {
                source: Arc::new(error),
            },
            Error::Operation(never) => match never {},
            error => internal(error),
        };
        Outcome::Rejected(rejection.to_response_as(grpc))
    }
}

/// A request whose key this call holds: the handler runs now. Dropped unfinished (the client
/// went away), the attempt is failed in the background and a retry runs again.
#[derive(Debug)]
pub struct Claimed<'e, Ctx: Clone + Send + Sync + 'static> {
    engine: &'e Engine<Ctx>,
    attempt: ana_core::Attempt<'e, Fingerprint, RecordedResponse, Ctx>,
    context: Attempt<Ctx>,
    grpc: bool,
}

impl<'e, Ctx: Clone + Send + Sync + 'static> Claimed<'e, Ctx> {
    /// What the handler is given: the store's session, the key and the target.
    pub fn attempt(&self) -> &Attempt<Ctx> {
        &self.context
    }

    /// Puts the [`Attempt`] (and the mark that makes nested layers pass the request through)
    /// in the request's extensions.
    pub fn enter(&self, extensions: &mut Extensions) {
        extensions.insert(InsideAttempt);
        extensions.insert(self.context.clone());
    }

    /// Calls the handler through `next` with the request (its extensions carrying the
    /// [`Attempt`]) and records its answer: `next` returns the handler's response, its body
    /// read up to [`IdempotencyConfig::max_stored_response`] bytes, or the error of a service
    /// that failed, which is recorded Failed (a 500) and handed back as is. A panic in `next`
    /// is caught: recorded Failed, answered with a 500 problem.
    pub async fn run<B, X, F, Fut>(
        self,
        mut parts: Parts,
        body: Bytes,
        next: F,
    ) -> Result<Outcome<B>, X>
    where
        F: FnOnce(Parts, Bytes) -> Fut,
        Fut: Future<Output = Result<Response<ResponseBody<B>>, X>>,
    {
        // The attempt moves into the request: the record's own key and target name a
        // rejection, should the recording fail.
        let (recording, context) = self.split();
        parts.extensions.insert(InsideAttempt);
        parts.extensions.insert(context);
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| next(parts, body)));
        let answered = match called {
            Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        match answered {
            Ok(Ok(response)) => Ok(recording.finish(response).await),
            Ok(Err(error)) => {
                let _ = recording
                    .finish::<B>(status_only(StatusCode::INTERNAL_SERVER_ERROR))
                    .await;
                Err(error)
            }
            Err(panic) => Ok(recording.panicked(panic).await),
        }
    }

    /// Records the handler's `response` (as Finished when its status is recordable, else
    /// the attempt as Failed) and answers [`Outcome::Executed`] with it, or
    /// [`Outcome::Rejected`] when the record could not take it (another attempt took over, it
    /// expired meanwhile, the store failed).
    pub async fn finish<B>(self, response: Response<ResponseBody<B>>) -> Outcome<B> {
        self.split().0.finish(response).await
    }

    /// Records the attempt Failed with the handler's panic (`Got panic "…"`) and answers a 500
    /// problem.
    pub async fn panicked<B>(self, panic: Box<dyn Any + Send>) -> Outcome<B> {
        self.split().0.panicked(panic).await
    }

    fn split(self) -> (Recording<'e, Ctx>, Attempt<Ctx>) {
        let Self {
            engine,
            attempt,
            context,
            grpc,
        } = self;
        let recording = Recording {
            engine,
            attempt,
            grpc,
        };
        (recording, context)
    }
}

/// A claimed attempt whose handler has been called: what records its answer.
struct Recording<'e, Ctx: Clone + Send + Sync + 'static> {
    engine: &'e Engine<Ctx>,
    attempt: ana_core::Attempt<'e, Fingerprint, RecordedResponse, Ctx>,
    grpc: bool,
}

impl<Ctx: Clone + Send + Sync + 'static> Recording<'_, Ctx> {
    async fn finish<B>(self, mut response: Response<ResponseBody<B>>) -> Outcome<B> {
        let config = self.engine.config();
        if !recordable(&response, config) {
            // The handler's answer is the caller's, whatever became of the record: it stays
            // Running until its timeout if the store failed.
            let message = NotRecorded(response.status()).to_string();
            let failure = Failure::new(FailureKind::Error, &message);
            let _ = self.attempt.fail(failure).await;
            return Outcome::Executed(response);
        }
        let Self {
            engine,
            attempt,
            grpc,
        } = self;
        let (recorded, moved) = record(&mut response, engine.config());
        let completed = attempt.complete::<Infallible>(&recorded).await;
        if moved {
            *response.headers_mut() = recorded.into_headers();
        }
        match completed {
            Ok(()) => Outcome::Executed(response),
            Err(error) => {
                let (target, key) = names(&error);
                engine.reject(error, key, target, grpc)
            }
        }
    }

    async fn panicked<B>(self, panic: Box<dyn Any + Send>) -> Outcome<B> {
        let message = Error::<Infallible>::from_panic(&*panic).to_string();
        let _ = self
            .attempt
            .fail(Failure::new(FailureKind::Panic, &message))
            .await;
        let rejection = Rejection::HandlerPanicked { message };
        Outcome::Rejected(rejection.to_response_as(self.grpc))
    }
}

/// The target and the client's key an error of the manager names (empty for one that names
/// none): the record's key is the scoped key, `<scope hash>:<client key>`.
fn names(error: &Error<Infallible>) -> (String, String) {
    match error {
        Error::Expired { target, key }
        | Error::StillRunning { target, key, .. }
        | Error::PayloadMismatch { target, key }
        | Error::Superseded { target, key } => (target.clone(), client_key(key).to_owned()),
        _ => (String::new(), String::new()),
    }
}

/// `Preference-Applied: wait=N` on the answer of a request that was allowed to wait `wait`
/// (RFC 7240): a replay or a 409.
fn applied<B>(mut outcome: Outcome<B>, wait: Option<Duration>) -> Outcome<B> {
    let Some(wait) = wait else {
        return outcome;
    };
    let headers = match &mut outcome {
        Outcome::Replayed(response) | Outcome::Executed(response) => response.headers_mut(),
        Outcome::Rejected(response) => response.headers_mut(),
    };
    if let Ok(value) = http::HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        headers.insert(http::HeaderName::from_static("preference-applied"), value);
    }
    outcome
}

/// The answer of a replay: the recorded response, or a 500 when its body was too large to
/// store (the handler never runs twice).
fn replay<B>(recorded: RecordedResponse, key: &str, grpc: bool) -> Outcome<B> {
    if !recorded.is_body_stored() {
        let key = key.to_owned();
        let rejection = Rejection::ResponseNotStored { key };
        return Outcome::Rejected(rejection.to_response_as(grpc));
    }
    Outcome::Replayed(match recorded.into_replay() {
        (replay, Some(trailers)) => {
            replay.map(|data| ResponseBody::WithTrailers { data, trailers })
        }
        (replay, None) => replay.map(ResponseBody::Full),
    })
}

/// Whether the handler's `response` is recorded as Finished (its status, or its gRPC status).
fn recordable<B>(response: &Response<ResponseBody<B>>, config: &IdempotencyConfig) -> bool {
    let trailers = match response.body() {
        ResponseBody::WithTrailers { trailers, .. } => Some(trailers),
        ResponseBody::Full(_) | ResponseBody::Streaming(_) => None,
    };
    config.is_recordable_response(response.status(), response.headers(), trailers)
}

/// The stored form of the handler's `response`. When every header of a whole body is one to
/// replay (the usual answer), the headers move into the record instead of being copied: `true`
/// then, and the caller puts them back ([`RecordedResponse::into_headers`]).
fn record<B>(
    response: &mut Response<ResponseBody<B>>,
    config: &IdempotencyConfig,
) -> (RecordedResponse, bool) {
    let allowed = config.replay_headers();
    let headers = response.headers();
    // Beyond `allowed.len()` values, `RecordedResponse::new` orders the headers by the list.
    let movable = headers.len() <= allowed.len() && headers.keys().all(|n| allowed.contains(n));
    if movable
        && let ResponseBody::Full(data) = response.body()
        && data.len() <= config.max_stored_response()
    {
        let data = data.clone();
        let headers = std::mem::take(response.headers_mut());
        return (
            RecordedResponse::with_allowed_headers(response.status(), headers, data),
            true,
        );
    }
    (copy_record(response, config), false)
}

/// The stored form of the handler's `response`, its replayed headers copied.
fn copy_record<B>(
    response: &Response<ResponseBody<B>>,
    config: &IdempotencyConfig,
) -> RecordedResponse {
    let (status, headers) = (response.status(), response.headers());
    let allowed = config.replay_headers();
    let limit = config.max_stored_response();
    match response.body() {
        ResponseBody::Full(data) if data.len() <= limit => {
            RecordedResponse::new(status, headers, allowed, data.clone())
        }
        ResponseBody::WithTrailers { data, trailers } if data.len() <= limit => {
            RecordedResponse::new(status, headers, allowed, data.clone())
                .with_trailers(trailers, allowed)
        }
        ResponseBody::WithTrailers { .. } | ResponseBody::Full(_) | ResponseBody::Streaming(_) => {
            RecordedResponse::without_body(status, headers, allowed)
        }
    }
}

/// A rejection as the response to a request with these headers.
fn rejected<B>(rejection: &Rejection, request: &HeaderMap) -> Response<ResponseBody<B>> {
    rejection.to_response_for(request).map(ResponseBody::Full)
}

/// A response with `status` and no body: what a service that failed stands for in the record.
fn status_only<B>(status: StatusCode) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::Full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Rejection {
    let source: BoxError = Box::new(error);
    Rejection::Internal {
        source: Arc::new(source),
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation is a panic.
    #![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ana_core::MemoryRepository;
    use ana_core::Status;

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
        let service = Engine::new(MemoryRepository::new());
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
