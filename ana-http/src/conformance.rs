//! The HTTP conformance suite: every web adapter must pass it (feature `test-utils`).
//!
//! The suite is framework-neutral. An adapter's test implements [`Adapter`]: given an
//! [`Engine`] and the suite's [`Routes`], build an app where every request goes
//! through the adapter's idempotency layer (or middleware) to [`Routes::handle`], and send it
//! requests ([`App::send`], no socket needed). Then one line makes each case a
//! `#[tokio::test]` (the crate needs `tokio` with `macros` and `rt-multi-thread` as a
//! dev-dependency):
//!
//! ```
//! use bytes::Bytes;
//! use ana_http::{Engine, ResponseBody};
//! use ana_http::conformance::{Adapter, App, Routes};
//!
//! /// The framework-neutral driver itself, as an "adapter".
//! struct Direct;
//!
//! struct DirectApp<Ctx> {
//!     engine: Engine<Ctx>,
//!     routes: Routes<Ctx>,
//! }
//!
//! impl Adapter for Direct {
//!     fn app<Ctx>(&self, engine: Engine<Ctx>, routes: Routes<Ctx>) -> impl App
//!     where
//!         Ctx: Clone + Send + Sync + 'static,
//!     {
//!         DirectApp { engine, routes }
//!     }
//! }
//!
//! impl<Ctx: Clone + Send + Sync + 'static> App for DirectApp<Ctx> {
//!     async fn send(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
//!         let routes = self.routes.clone();
//!         let next = move |parts, body| async move {
//!             let response = routes.handle(http::Request::from_parts(parts, body)).await;
//!             response.map(ResponseBody::<()>::Full)
//!         };
//!         self.engine.handle(request, next).await.map(|body| match body {
//!             ResponseBody::Full(bytes) => bytes,
//!             ResponseBody::WithTrailers { data, .. } => data,
//!             ResponseBody::Streaming(()) => Bytes::new(),
//!         })
//!     }
//! }
//!
//! ana_http::http_conformance_tests!(Direct);
//! # fn main() {}
//! ```
//!
//! The cases cover every row of the status table, every header format and its errors, scope
//! and target isolation, `Set-Cookie` never replayed, the body limits, a store that is down,
//! the handler's run count in each case, and concurrent requests with one key.

// Test code: a failed expectation is a panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, LOCATION,
    RETRY_AFTER, SET_COOKIE,
};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::{Barrier, Semaphore, mpsc};

use super::config::{IETF_KEY_HEADER, IdempotencyConfig, KEY_HEADER, value};
use super::grpc::{GRPC_MESSAGE, GRPC_RETRY_PUSHBACK, GRPC_STATUS};
use super::problem::PROBLEM_TYPE_HEADER;
use super::recorded::{IDEMPOTENT_REPLAYED, RecordedResponseCodec};
use crate::engine::{Attempt, Engine};
use ana_core::{
    Claim, ClaimRequest, Clock, Completion, Failure, IdempotencyRepository, Lease, Manager,
    ManualClock, MemoryRepository, MemorySession, RecordId, RepositoryError, Status,
    TrackedOperation,
};

/// A web framework adapter under test.
pub trait Adapter: Send + Sync + 'static {
    /// An app that sends every request through the adapter's idempotency layer, built over
    /// `engine`, to [`Routes::handle`]. The handler must see the request's extensions as the
    /// layer set them (the [`Attempt`]).
    fn app<Ctx>(&self, engine: Engine<Ctx>, routes: Routes<Ctx>) -> impl App
    where
        Ctx: Clone + Send + Sync + 'static;
}

/// An app built by an [`Adapter`].
pub trait App: Send + Sync + 'static {
    /// Sends one request and reads the whole response.
    fn send(&self, request: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send;
}

/// Generates one `#[tokio::test]` per HTTP conformance case; `$adapter` is an expression
/// giving an [`Adapter`].
#[macro_export]
macro_rules! http_conformance_tests {
    ($adapter:expr) => {
        $crate::http_conformance_tests!(@cases $adapter;
            first_run_returns_the_handler_response,
            replay_returns_the_recorded_response,
            set_cookie_is_never_replayed,
            session_context_reaches_the_handler,
            missing_key_is_400,
            optional_key_passes_through,
            malformed_keys_are_400,
            ietf_key_header_is_accepted,
            malformed_ietf_keys_are_400,
            conflicting_or_repeated_key_headers_are_400,
            reference_time_header_is_read,
            malformed_reference_times_are_400,
            duration_headers_accept_go_and_humantime,
            malformed_or_excessive_durations_are_400,
            timeouts_below_the_minimum_are_400,
            payload_mismatch_is_422,
            still_running_is_409_with_retry_after,
            still_running_retry_after_is_the_time_left,
            waiting_requests_get_the_first_answer,
            a_wait_that_runs_out_is_409_and_capped,
            prefer_wait_is_ignored_unless_the_server_allows_waiting,
            concurrent_same_key_requests_run_once,
            racing_same_key_requests_run_once,
            expired_request_is_422_and_does_not_run,
            expired_failed_record_does_not_run,
            finished_record_replays_after_expiration,
            request_body_over_the_limit_is_413,
            store_unavailable_is_503,
            handler_5xx_is_returned_and_retried,
            handler_panic_is_500_and_retried,
            retryable_4xx_is_not_recorded,
            recordable_4xx_is_replayed,
            recordable_statuses_are_configurable,
            scopes_isolate_clients,
            targets_isolate_routes,
            request_functions_override_the_defaults,
            large_response_is_not_stored_and_never_reruns,
            timed_out_attempt_is_superseded,
            grpc_statuses_decide_what_is_recorded,
            grpc_calls_are_rejected_with_grpc_statuses,
        );
    };
    (@cases $adapter:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case($adapter).await;
            }
        )*
    };
}

/// The suite's routes. Every route counts its runs ([`runs`](Self::runs)).
///
/// | route | answer |
/// |---|---|
/// | `POST /hello` | 201 JSON `{"message":"Hello <key>!","run":n}`, `Set-Cookie`, `Location: /hello/<n>`, `ETag` |
/// | `POST /echo` | 200, the request body |
/// | `POST /session` | 200 `key=<key>` when the [`Attempt`] reached it, else `none` |
/// | `POST /fail` | 500 `handler failed` |
/// | `POST /panic` | panics |
/// | `POST /slow` | says it started ([`started`](Self::started)), waits for [`release`](Self::release), then 201 |
/// | `POST /unprocessable` | 422 JSON |
/// | `POST /busy` | 429 |
/// | `POST /large` | 200 with [`LARGE_BODY`] bytes |
/// | `POST /grpc.Test/NotFound` | gRPC trailers-only `NOT_FOUND` (`grpc-status: 5` in the headers) |
/// | `POST /grpc.Test/Unavailable` | gRPC trailers-only `UNAVAILABLE` (`grpc-status: 14`) |
/// | other | 404 |
pub struct Routes<Ctx> {
    inner: Arc<RoutesInner>,
    session: std::marker::PhantomData<fn() -> Ctx>,
}

struct RoutesInner {
    runs: Mutex<HashMap<String, usize>>,
    started_tx: mpsc::UnboundedSender<()>,
    started_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    gate: Semaphore,
}

/// The size of the `/large` route's body.
pub const LARGE_BODY: usize = 4096;

impl<Ctx> Clone for Routes<Ctx> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            session: std::marker::PhantomData,
        }
    }
}

impl<Ctx> fmt::Debug for Routes<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("runs", &self.inner.runs)
            .finish_non_exhaustive()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> Default for Routes<Ctx> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> Routes<Ctx> {
    /// Fresh routes with zero runs.
    pub fn new() -> Self {
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(RoutesInner {
                runs: Mutex::default(),
                started_tx,
                started_rx: tokio::sync::Mutex::new(started_rx),
                gate: Semaphore::new(0),
            }),
            session: std::marker::PhantomData,
        }
    }

    /// How many times the handler of `path` ran.
    pub fn runs(&self, path: &str) -> usize {
        self.inner
            .runs
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until a `/slow` request has started.
    pub async fn started(&self) {
        let mut started = self.inner.started_rx.lock().await;
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("no /slow request started within 10s")
            .expect("the routes are alive");
    }

    /// Lets `n` waiting (or future) `/slow` requests finish.
    pub fn release(&self, n: usize) {
        self.inner.gate.add_permits(n);
    }

    /// Runs the route of `request`.
    pub fn handle(
        &self,
        request: Request<Bytes>,
    ) -> impl Future<Output = Response<Bytes>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let path = request.uri().path().to_owned();
            let run = {
                let mut runs = inner.runs.lock().unwrap();
                let run = runs.entry(path.clone()).or_default();
                *run += 1;
                *run
            };
            let key = request
                .extensions()
                .get::<Attempt<Ctx>>()
                .map(|context| context.key().to_owned());
            if request.method() != Method::POST {
                return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "");
            }
            match path.as_str() {
                "/hello" => {
                    let key = key.unwrap_or_else(|| "stranger".to_owned());
                    let body = format!(r#"{{"message":"Hello {key}!","run":{run}}}"#);
                    let mut response = respond(StatusCode::CREATED, "application/json", body);
                    let headers = response.headers_mut();
                    headers.insert(LOCATION, header(&format!("/hello/{run}")));
                    headers.insert(ETAG, header(&format!("\"run-{run}\"")));
                    headers.insert(SET_COOKIE, header(&format!("session=secret-{run}")));
                    response
                }
                "/echo" => {
                    let body = request.into_body();
                    respond(StatusCode::OK, "application/octet-stream", body)
                }
                "/session" => match key {
                    Some(key) => respond(StatusCode::OK, "text/plain", format!("key={key}")),
                    None => respond(StatusCode::OK, "text/plain", "none"),
                },
                "/fail" => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "handler failed",
                ),
                "/panic" => panic!("secret panic text"),
                "/slow" => {
                    let _ = inner.started_tx.send(());
                    inner.gate.acquire().await.expect("gate open").forget();
                    respond(StatusCode::CREATED, "text/plain", format!("slow run {run}"))
                }
                "/unprocessable" => respond(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "application/json",
                    format!(r#"{{"error":"invalid amount","run":{run}}}"#),
                ),
                "/busy" => respond(StatusCode::TOO_MANY_REQUESTS, "text/plain", "busy"),
                "/large" => respond(StatusCode::OK, "text/plain", vec![b'x'; LARGE_BODY]),
                "/grpc.Test/NotFound" => grpc_status(5, &format!("no account, run {run}")),
                "/grpc.Test/Unavailable" => grpc_status(14, "try later"),
                _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
            }
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, header(content_type));
    response
}

/// A gRPC trailers-only answer.
fn grpc_status(code: i32, message: &str) -> Response<Bytes> {
    let mut response = respond(StatusCode::OK, "application/grpc", Bytes::new());
    let headers = response.headers_mut();
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    headers.insert(GRPC_MESSAGE, header(message));
    response
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap()
}

/// A store that is down: every call fails with [`RepositoryError::Unavailable`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UnavailableRepository;

/// The text of [`UnavailableRepository`]'s errors; it must never reach a response body.
pub const UNAVAILABLE_SECRET: &str = "connection refused by db-secret-host:5432";

fn down() -> RepositoryError {
    RepositoryError::Unavailable(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        UNAVAILABLE_SECRET,
    )))
}

impl IdempotencyRepository for UnavailableRepository {
    type Session = ();

    async fn claim(&self, _: &ClaimRequest<'_>) -> Result<Claim<()>, RepositoryError> {
        Err(down())
    }

    async fn complete(
        &self,
        _: (),
        _: RecordId<'_>,
        _: Lease,
        _: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        Err(down())
    }

    async fn fail(
        &self,
        _: (),
        _: RecordId<'_>,
        _: Lease,
        _: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        Err(down())
    }

    async fn get(&self, _: &str, _: &str) -> Result<Option<TrackedOperation>, RepositoryError> {
        Err(down())
    }
}

/// One case's world: a memory store on a manual clock, the routes, and the adapter's app.
struct World<A> {
    app: Arc<A>,
    routes: Routes<MemorySession>,
    repository: MemoryRepository,
    clock: ManualClock,
    /// One message per request that started waiting for a duplicate in flight.
    waiting: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

fn world<Ad: Adapter>(adapter: &Ad, config: IdempotencyConfig) -> World<impl App> {
    let clock = ManualClock::default();
    // Expired records stay until the case ends (a day between sweeps).
    let repository = MemoryRepository::new()
        .with_clock(clock.clone())
        .with_sweep_interval(Duration::from_secs(24 * 3600));
    let (waiting_tx, waiting) = mpsc::unbounded_channel();
    let manager = Manager::with_codec(repository.clone(), RecordedResponseCodec)
        .with_clock(clock.clone())
        .on_event(move |event| {
            if event.kind == ana_core::EventKind::Waiting {
                let _ = waiting_tx.send(());
            }
        });
    let service = Engine::from_manager(manager).with_config(config);
    let routes = Routes::new();
    World {
        app: Arc::new(adapter.app(service, routes.clone())),
        routes,
        repository,
        clock,
        waiting: tokio::sync::Mutex::new(waiting),
    }
}

impl<A: App> World<A> {
    async fn send(&self, request: Request<Bytes>) -> Response<Bytes> {
        self.app.send(request).await
    }

    fn spawn(&self, request: Request<Bytes>) -> tokio::task::JoinHandle<Response<Bytes>> {
        let app = Arc::clone(&self.app);
        tokio::spawn(async move { app.send(request).await })
    }

    async fn record(
        &self,
        target: &str,
        key: &str,
        scope: Option<&str>,
    ) -> Option<TrackedOperation> {
        let key = super::config::scoped_key(scope.map(str::as_bytes), key);
        self.repository.get(target, &key).await.unwrap()
    }
}

/// A request builder for the cases.
struct Call {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

fn post(path: &str) -> Call {
    Call {
        method: Method::POST,
        path: path.to_owned(),
        headers: Vec::new(),
        body: Bytes::from_static(b"{\"name\":\"ana\"}"),
    }
}

impl Call {
    fn key(self, key: &str) -> Self {
        self.header(KEY_HEADER, key)
    }

    fn header(self, name: HeaderName, value: &str) -> Self {
        self.raw_header(name, value.as_bytes())
    }

    fn raw_header(mut self, name: HeaderName, value: &[u8]) -> Self {
        self.headers
            .push((name, HeaderValue::from_bytes(value).unwrap()));
        self
    }

    fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn build(self) -> Request<Bytes> {
        let mut builder = Request::builder().method(self.method).uri(&self.path);
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        let length = self.body.len();
        builder
            .header(CONTENT_LENGTH, length)
            .body(self.body)
            .unwrap()
    }
}

fn text(response: &Response<Bytes>) -> String {
    String::from_utf8_lossy(response.body()).into_owned()
}

fn is_replay(response: &Response<Bytes>) -> bool {
    response
        .headers()
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|value| value == "true")
}

/// Checks an RFC 9457 problem response and returns its document.
fn problem(response: &Response<Bytes>, status: StatusCode, slug: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "body: {}", text(response));
    assert_eq!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        Some(&b"application/problem+json"[..])
    );
    let document: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        document["type"],
        format!("https://ana.dev/problems/{slug}"),
        "{document}"
    );
    assert_eq!(document["status"], status.as_u16());
    assert!(document["title"].is_string() && document["detail"].is_string());
    assert!(!is_replay(response));
    document
}

fn assert_names_header(document: &serde_json::Value, header: &str) {
    assert_eq!(document["header"], header, "{document}");
    assert!(
        document["detail"].as_str().unwrap().contains(header),
        "{document}"
    );
}

fn retry_after(response: &Response<Bytes>) -> u64 {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {:?}", response.headers()))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339()
}

const HELLO: &str = "[POST]/hello";

// ---------------------------------------------------------------------------------------------
// The cases.

/// A first call runs the handler and answers with its response, every header included.
pub async fn first_run_returns_the_handler_response<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let response = world.send(post("/hello").key("k1").build()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(text(&response), r#"{"message":"Hello k1!","run":1}"#);
    assert_eq!(response.headers()[LOCATION], "/hello/1");
    assert_eq!(response.headers()[SET_COOKIE], "session=secret-1");
    assert!(!is_replay(&response));
    assert_eq!(world.routes.runs("/hello"), 1);
    let record = world.record(HELLO, "k1", None).await.unwrap();
    assert_eq!(record.status, Status::Finished);
}

/// A retry gets the recorded status, allow-listed headers and body, marked as a replay, and
/// the handler does not run again.
pub async fn replay_returns_the_recorded_response<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world.send(post("/hello").key("k1").build()).await;
    for _ in 0..3 {
        let again = world.send(post("/hello").key("k1").build()).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert!(is_replay(&again));
        assert_eq!(again.body(), first.body());
        for name in [CONTENT_TYPE, LOCATION, ETAG] {
            assert_eq!(
                again.headers().get(&name),
                first.headers().get(&name),
                "{name}"
            );
        }
        assert_eq!(
            again.headers()[CONTENT_LENGTH],
            first.body().len().to_string().as_str()
        );
        assert!(again.headers().get(SET_COOKIE).is_none());
    }
    assert_eq!(world.routes.runs("/hello"), 1);
}

/// `Set-Cookie` is never replayed, even when the configuration lists it.
pub async fn set_cookie_is_never_replayed<Ad: Adapter>(adapter: Ad) {
    let config =
        IdempotencyConfig::default().with_replay_headers([CONTENT_TYPE, SET_COOKIE, LOCATION]);
    assert_eq!(
        config.replay_headers(),
        &[CONTENT_TYPE, LOCATION, GRPC_STATUS, GRPC_MESSAGE]
    );
    let world = world(&adapter, config);
    let first = world.send(post("/hello").key("k").build()).await;
    assert!(first.headers().get(SET_COOKIE).is_some());
    let again = world.send(post("/hello").key("k").build()).await;
    assert!(is_replay(&again));
    assert!(again.headers().get(SET_COOKIE).is_none());
    assert!(again.headers().get(ETAG).is_none(), "ETag was not listed");
    assert_eq!(again.headers()[LOCATION], "/hello/1");
}

/// The handler finds the [`Attempt`] (session, key) in its request extensions.
pub async fn session_context_reaches_the_handler<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let response = world.send(post("/session").key("ctx-1").build()).await;
    assert_eq!(text(&response), "key=ctx-1");
}

/// Without a key the request is refused with a problem naming the header.
pub async fn missing_key_is_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let response = world.send(post("/hello").build()).await;
    let document = problem(&response, StatusCode::BAD_REQUEST, "missing-key");
    assert_names_header(&document, "X-Idempotency-Key");
    assert_eq!(world.routes.runs("/hello"), 0);
}

/// With keys optional, a request without one reaches the handler untouched every time; a
/// request with one is still idempotent.
pub async fn optional_key_passes_through<Ad: Adapter>(adapter: Ad) {
    let world = world(
        &adapter,
        IdempotencyConfig::default().with_key_required(false),
    );
    for run in 1..=2 {
        let response = world.send(post("/hello").build()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            text(&response),
            format!(r#"{{"message":"Hello stranger!","run":{run}}}"#)
        );
        assert!(!is_replay(&response));
    }
    world.send(post("/hello").key("k").build()).await;
    assert!(is_replay(
        &world.send(post("/hello").key("k").build()).await
    ));
    assert_eq!(world.routes.runs("/hello"), 3);
}

/// Keys are 1 to 255 visible ASCII characters; anything else is a 400 naming the header.
pub async fn malformed_keys_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let long = "k".repeat(256);
    let bad: [&[u8]; 5] = [b"", long.as_bytes(), b"a b", "café".as_bytes(), b"a\tb"];
    for key in bad {
        let response = world
            .send(post("/hello").raw_header(KEY_HEADER, key).build())
            .await;
        let document = problem(&response, StatusCode::BAD_REQUEST, "invalid-header");
        assert_names_header(&document, "X-Idempotency-Key");
    }
    assert_eq!(world.routes.runs("/hello"), 0);
    let longest = "k".repeat(255);
    for key in [longest.as_str(), "a", "~!#$%&'*+-.^_`|:;<=>?@[]{}()\"\\/,"] {
        let response = world.send(post("/hello").key(key).build()).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{key}");
    }
    assert_eq!(world.routes.runs("/hello"), 3);
}

/// The IETF `Idempotency-Key` header (a structured-field string item, parameters ignored)
/// names the same key as the plain header.
pub async fn ietf_key_header_is_accepted<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world
        .send(post("/hello").header(IETF_KEY_HEADER, "\"k-ietf\"").build())
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(text(&first), r#"{"message":"Hello k-ietf!","run":1}"#);
    let plain = world.send(post("/hello").key("k-ietf").build()).await;
    assert!(is_replay(&plain));
    let escaped = world
        .send(
            post("/session")
                .header(IETF_KEY_HEADER, r#""a\"b\\c""#)
                .build(),
        )
        .await;
    assert_eq!(text(&escaped), r#"key=a"b\c"#);
    // An RFC 8941 item may carry parameters: they are ignored, the key is the string.
    let with_parameters = world
        .send(
            post("/hello")
                .header(IETF_KEY_HEADER, "\"k-ietf\";p=1")
                .build(),
        )
        .await;
    assert!(is_replay(&with_parameters));
    assert_eq!(world.routes.runs("/hello"), 1);
}

/// A malformed `Idempotency-Key` is a 400 naming it.
pub async fn malformed_ietf_keys_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    for value in ["k", "\"k", "k\"", "\"a\"b\"", r#""a\x""#, "\"\"", "\"a b\""] {
        let response = world
            .send(post("/hello").header(IETF_KEY_HEADER, value).build())
            .await;
        let document = problem(&response, StatusCode::BAD_REQUEST, "invalid-header");
        assert_names_header(&document, "Idempotency-Key");
    }
    assert_eq!(world.routes.runs("/hello"), 0);
}

/// Two key headers that disagree, or a key header sent twice, are a 400; agreeing headers are
/// fine.
pub async fn conflicting_or_repeated_key_headers_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let conflicting = post("/hello")
        .key("a")
        .header(IETF_KEY_HEADER, "\"b\"")
        .build();
    let document = problem(
        &world.send(conflicting).await,
        StatusCode::BAD_REQUEST,
        "invalid-header",
    );
    assert_names_header(&document, "X-Idempotency-Key");
    let repeated = post("/hello").key("a").key("a").build();
    let document = problem(
        &world.send(repeated).await,
        StatusCode::BAD_REQUEST,
        "invalid-header",
    );
    assert_names_header(&document, "X-Idempotency-Key");
    let repeated = post("/hello")
        .header(IETF_KEY_HEADER, "\"a\"")
        .header(IETF_KEY_HEADER, "\"a\"")
        .build();
    let document = problem(
        &world.send(repeated).await,
        StatusCode::BAD_REQUEST,
        "invalid-header",
    );
    assert_names_header(&document, "Idempotency-Key");
    assert_eq!(world.routes.runs("/hello"), 0);
    let agreeing = post("/hello")
        .key("a")
        .header(IETF_KEY_HEADER, "\"a\"")
        .build();
    assert_eq!(world.send(agreeing).await.status(), StatusCode::CREATED);
    assert_eq!(world.routes.runs("/hello"), 1);
}

/// An RFC 3339 reference time is the record's reference time; expiration counts from it.
pub async fn reference_time_header_is_read<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let at = world.clock.now() - chrono::TimeDelta::minutes(10);
    let at = DateTime::<Utc>::from_timestamp(at.timestamp(), 0).unwrap();
    let response = world
        .send(
            post("/hello")
                .key("k")
                .header(
                    crate::REFERENCE_TIME_HEADER,
                    &at.with_timezone(&chrono::FixedOffset::east_opt(7200).unwrap())
                        .to_rfc3339(),
                )
                .header(crate::EXPIRATION_HEADER, "1h")
                .build(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let record = world.record(HELLO, "k", None).await.unwrap();
    assert_eq!(record.reference_time, at);
    assert_eq!(record.expiration, Some(at + chrono::TimeDelta::hours(1)));
}

/// A reference time that is not RFC 3339, or too far ahead of the server's clock, is a 400.
pub async fn malformed_reference_times_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let ahead = rfc3339(world.clock.now() + chrono::TimeDelta::hours(1));
    for value in [
        "yesterday",
        "2025-13-01T00:00:00Z",
        "1700000000",
        "2025-01-01",
        "2025-01-01 00:00:00",
        ahead.as_str(),
    ] {
        let response = world
            .send(
                post("/hello")
                    .key("k")
                    .header(crate::REFERENCE_TIME_HEADER, value)
                    .build(),
            )
            .await;
        let document = problem(&response, StatusCode::BAD_REQUEST, "invalid-header");
        assert_names_header(&document, "X-Idempotency-Reference-Time");
    }
    assert_eq!(world.routes.runs("/hello"), 0);
}

/// Timeout and expiration accept Go durations and humantime; the record holds them.
pub async fn duration_headers_accept_go_and_humantime<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let cases = [
        ("10s", "10s", 10),
        ("1m30s", "1h30m", 5400),
        ("1500ms", "1.5h", 5400),
        ("0.5h", "2 hours", 7200),
        ("45 minutes", "1day", 86_400),
        ("1h", "7days", 7 * 86_400),
    ];
    for (index, (timeout, expiration, expiration_s)) in cases.into_iter().enumerate() {
        let key = format!("k{index}");
        let response = world
            .send(
                post("/hello")
                    .key(&key)
                    .header(crate::TIMEOUT_HEADER, timeout)
                    .header(crate::EXPIRATION_HEADER, expiration)
                    .build(),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{timeout} {expiration}"
        );
        let record = world.record(HELLO, &key, None).await.unwrap();
        let expires_in = record.expiration.unwrap() - record.reference_time;
        assert_eq!(expires_in.num_seconds(), expiration_s, "{expiration}");
    }
    // The timeout reaches the lock: a Running record's deadline is claim time + timeout.
    let slow = world.spawn(
        post("/slow")
            .key("t")
            .header(crate::TIMEOUT_HEADER, "1m30s")
            .build(),
    );
    world.routes.started().await;
    let record = world.record("[POST]/slow", "t", None).await.unwrap();
    assert_eq!(record.status, Status::Running);
    let held_for = record.timeout.unwrap() - record.started_at.unwrap();
    assert_eq!(held_for.num_seconds(), 90);
    world.routes.release(1);
    assert_eq!(slow.await.unwrap().status(), StatusCode::CREATED);
}

/// A malformed, negative, zero ("never") or over-the-maximum duration is a 400 naming the
/// header.
pub async fn malformed_or_excessive_durations_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let both = [
        "10",
        "ten seconds",
        "-5s",
        "1h30",
        "",
        "9999999999999h",
        "0",
    ];
    for (header, name, over) in [
        (crate::TIMEOUT_HEADER, "X-Idempotency-Timeout", "2h"),
        (
            crate::EXPIRATION_HEADER,
            "X-Idempotency-Expiration",
            "8days",
        ),
    ] {
        for value in both.iter().copied().chain([over]) {
            let response = world
                .send(
                    post("/hello")
                        .key("k")
                        .header(header.clone(), value)
                        .build(),
                )
                .await;
            let document = problem(&response, StatusCode::BAD_REQUEST, "invalid-header");
            assert_names_header(&document, name);
        }
    }
    assert_eq!(world.routes.runs("/hello"), 0);
}

/// A timeout below the server's minimum (1s by default) is a 400 naming the header, and the
/// handler does not run: past its timeout a duplicate would take the key over and run it
/// again. At the minimum it runs; a server that lowers the floor accepts shorter timeouts.
pub async fn timeouts_below_the_minimum_are_400<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    for (key, value) in [("a", "1ns"), ("b", "500ms"), ("c", "999ms")] {
        let response = world
            .send(
                post("/hello")
                    .key(key)
                    .header(crate::TIMEOUT_HEADER, value)
                    .build(),
            )
            .await;
        let document = problem(&response, StatusCode::BAD_REQUEST, "invalid-header");
        assert_names_header(&document, "X-Idempotency-Timeout");
        assert!(
            document["detail"]
                .as_str()
                .unwrap()
                .contains("minimum of 1s"),
            "{document}"
        );
    }
    assert_eq!(world.routes.runs("/hello"), 0);
    let at_the_floor = world
        .send(
            post("/hello")
                .key("d")
                .header(crate::TIMEOUT_HEADER, "1s")
                .build(),
        )
        .await;
    assert!(at_the_floor.status().is_success(), "{at_the_floor:?}");
    let lowered = IdempotencyConfig::default().with_min_timeout(Some(Duration::from_millis(10)));
    let world_lowered = self::world(&adapter, lowered);
    let short = world_lowered
        .send(
            post("/hello")
                .key("e")
                .header(crate::TIMEOUT_HEADER, "20ms")
                .build(),
        )
        .await;
    assert!(short.status().is_success(), "{short:?}");
    assert_eq!(
        world.routes.runs("/hello") + world_lowered.routes.runs("/hello"),
        2
    );
}

/// The same key with another body, or another query string, is a 422; the handler does not
/// run.
pub async fn payload_mismatch_is_422<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    world
        .send(post("/hello").key("k").body("one").build())
        .await;
    let other_body = world
        .send(post("/hello").key("k").body("two").build())
        .await;
    let document = problem(
        &other_body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "payload-mismatch",
    );
    assert!(document["detail"].as_str().unwrap().contains("key k"));
    let other_query = world
        .send(post("/hello?amount=2").key("k").body("one").build())
        .await;
    problem(
        &other_query,
        StatusCode::UNPROCESSABLE_ENTITY,
        "payload-mismatch",
    );
    assert_eq!(world.routes.runs("/hello"), 1);
    // The mismatch never masks the replay of the original request.
    assert!(is_replay(
        &world
            .send(post("/hello").key("k").body("one").build())
            .await
    ));
}

/// While the first request runs, a retry gets 409 with `Retry-After`; afterwards the replay.
pub async fn still_running_is_409_with_retry_after<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world.spawn(
        post("/slow")
            .key("k")
            .header(crate::TIMEOUT_HEADER, "30s")
            .build(),
    );
    world.routes.started().await;
    let busy = world.send(post("/slow").key("k").build()).await;
    let document = problem(&busy, StatusCode::CONFLICT, "still-running");
    assert_eq!(
        document["detail"],
        "Operation [POST]/slow still running for key k."
    );
    // The time left before the 30s timeout, capped at 5s by default.
    let seconds = retry_after(&busy);
    assert_eq!(seconds, 5);
    world.routes.release(1);
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = world.send(post("/slow").key("k").build()).await;
    assert!(is_replay(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(world.routes.runs("/slow"), 1);
}

/// The 409's `Retry-After` is the time left before the holder's timeout when under the cap.
pub async fn still_running_retry_after_is_the_time_left<Ad: Adapter>(adapter: Ad) {
    let config =
        IdempotencyConfig::default().with_max_still_running_retry_after(Duration::from_secs(3600));
    let world = world(&adapter, config);
    let first = world.spawn(
        post("/slow")
            .key("k")
            .header(crate::TIMEOUT_HEADER, "30s")
            .build(),
    );
    world.routes.started().await;
    world.clock.advance(Duration::from_millis(10_500));
    let busy = world.send(post("/slow").key("k").build()).await;
    problem(&busy, StatusCode::CONFLICT, "still-running");
    // 19.5s left, rounded up.
    assert_eq!(retry_after(&busy), 20);
    world.routes.release(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
}

const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

impl<A: App> World<A> {
    /// Returns once `n` requests started waiting.
    async fn waiting(&self, n: usize) {
        let mut waiting = self.waiting.lock().await;
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(10), waiting.recv())
                .await
                .expect("no request started waiting within 10s")
                .expect("the manager is alive");
        }
    }
}

/// With waiting allowed, requests sent with `Prefer: wait=5` while the first runs wait for it
/// and answer its recorded response, replayed, with `Preference-Applied: wait=5`: one run.
pub async fn waiting_requests_get_the_first_answer<Ad: Adapter>(adapter: Ad) {
    let world = world(
        &adapter,
        IdempotencyConfig::default().with_wait(Duration::from_secs(30)),
    );
    let first = world.spawn(post("/slow").key("k").build());
    world.routes.started().await;
    let waiters: Vec<_> = (0..8)
        .map(|_| world.spawn(post("/slow").key("k").header(PREFER, "wait=5").build()))
        .collect();
    world.waiting(8).await;
    world.routes.release(1);
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    for waiter in waiters {
        let waiter = waiter.await.unwrap();
        assert!(is_replay(&waiter), "{}: {}", waiter.status(), text(&waiter));
        assert_eq!(waiter.body(), first.body());
        assert_eq!(waiter.headers()[&PREFERENCE_APPLIED], "wait=5");
    }
    assert_eq!(world.routes.runs("/slow"), 1);
}

/// A request whose wait runs out gets the 409 with `Retry-After`; a `Prefer: wait` above the
/// server's maximum is capped to it, as `Preference-Applied` says.
pub async fn a_wait_that_runs_out_is_409_and_capped<Ad: Adapter>(adapter: Ad) {
    let world = world(
        &adapter,
        IdempotencyConfig::default().with_wait(Duration::from_secs(1)),
    );
    let first = world.spawn(
        post("/slow")
            .key("k")
            .header(crate::TIMEOUT_HEADER, "30s")
            .build(),
    );
    world.routes.started().await;
    let busy = world
        .send(post("/slow").key("k").header(PREFER, "wait=600").build())
        .await;
    problem(&busy, StatusCode::CONFLICT, "still-running");
    assert_eq!(retry_after(&busy), 5);
    assert_eq!(busy.headers()[&PREFERENCE_APPLIED], "wait=1");
    world.routes.release(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(world.routes.runs("/slow"), 1);
}

/// Without a server maximum (the default) nothing waits: `Prefer: wait` is ignored, the 409
/// comes at once and no preference is reported applied.
pub async fn prefer_wait_is_ignored_unless_the_server_allows_waiting<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world.spawn(post("/slow").key("k").build());
    world.routes.started().await;
    let busy = world
        .send(post("/slow").key("k").header(PREFER, "wait=5").build())
        .await;
    problem(&busy, StatusCode::CONFLICT, "still-running");
    assert!(busy.headers().get(&PREFERENCE_APPLIED).is_none());
    world.routes.release(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
}

/// 24 requests with one key while the first runs: one handler run, 23 × 409, then replays.
pub async fn concurrent_same_key_requests_run_once<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world.spawn(post("/slow").key("k").build());
    world.routes.started().await;
    let others: Vec<_> = (0..23)
        .map(|_| world.spawn(post("/slow").key("k").build()))
        .collect();
    for other in others {
        let response = other.await.unwrap();
        problem(&response, StatusCode::CONFLICT, "still-running");
        assert!(retry_after(&response) >= 1);
    }
    world.routes.release(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
    assert!(is_replay(&world.send(post("/slow").key("k").build()).await));
    assert_eq!(world.routes.runs("/slow"), 1);
}

/// 24 requests with one key released together: the handler runs once; every answer is the
/// first run, a 409, or a replay of the first run.
pub async fn racing_same_key_requests_run_once<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let barrier = Arc::new(Barrier::new(24));
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let app = Arc::clone(&world.app);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                app.send(post("/hello").key("race").build()).await
            })
        })
        .collect();
    let (mut executed, mut replayed, mut conflicts) = (0, 0, 0);
    for task in tasks {
        let response = task.await.unwrap();
        match response.status() {
            StatusCode::CREATED if is_replay(&response) => replayed += 1,
            StatusCode::CREATED => executed += 1,
            StatusCode::CONFLICT => {
                problem(&response, StatusCode::CONFLICT, "still-running");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", text(&response)),
        }
        if response.status() == StatusCode::CREATED {
            assert_eq!(text(&response), r#"{"message":"Hello race!","run":1}"#);
        }
    }
    assert_eq!(executed, 1);
    assert_eq!(executed + replayed + conflicts, 24);
    assert_eq!(world.routes.runs("/hello"), 1);
}

/// A request past its reference time plus expiration is refused with 422 `expired`, before the
/// store is touched.
pub async fn expired_request_is_422_and_does_not_run<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let response = world
        .send(
            post("/hello")
                .key("k")
                .header(
                    crate::REFERENCE_TIME_HEADER,
                    &rfc3339(world.clock.now() - chrono::TimeDelta::hours(2)),
                )
                .header(crate::EXPIRATION_HEADER, "1h")
                .build(),
        )
        .await;
    let document = problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "expired");
    assert_eq!(
        document["detail"],
        "Operation [POST]/hello expired for key k."
    );
    assert_eq!(world.routes.runs("/hello"), 0);
    assert!(world.record(HELLO, "k", None).await.is_none());
}

/// A Failed record past its expiration is not run again: 422 `expired`.
pub async fn expired_failed_record_does_not_run<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let call = || {
        post("/fail")
            .key("k")
            .header(crate::EXPIRATION_HEADER, "1h")
            .build()
    };
    assert_eq!(
        world.send(call()).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    world.clock.advance(Duration::from_secs(2 * 3600));
    problem(
        &world.send(call()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "expired",
    );
    assert_eq!(world.routes.runs("/fail"), 1);
}

/// A Finished record still replays after its expiration.
pub async fn finished_record_replays_after_expiration<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let call = || {
        post("/hello")
            .key("k")
            .header(crate::EXPIRATION_HEADER, "1h")
            .build()
    };
    world.send(call()).await;
    world.clock.advance(Duration::from_secs(2 * 3600));
    let again = world.send(call()).await;
    assert!(is_replay(&again));
    assert_eq!(world.routes.runs("/hello"), 1);
}

/// A body over the limit is a 413: the handler does not run and nothing is recorded, so the
/// key stays usable.
pub async fn request_body_over_the_limit_is_413<Ad: Adapter>(adapter: Ad) {
    let world = world(
        &adapter,
        IdempotencyConfig::default().with_max_request_body(16),
    );
    let response = world
        .send(post("/echo").key("k").body(vec![b'a'; 17]).build())
        .await;
    let document = problem(
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    );
    assert!(document["detail"].as_str().unwrap().contains("16 bytes"));
    assert_eq!(world.routes.runs("/echo"), 0);
    assert!(world.record("[POST]/echo", "k", None).await.is_none());
    // Without a Content-Length the body is still cut at the limit.
    let mut request = post("/echo").key("k").body(vec![b'a'; 17]).build();
    request.headers_mut().remove(CONTENT_LENGTH);
    problem(
        &world.send(request).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    );
    let fits = world
        .send(post("/echo").key("k").body(vec![b'a'; 16]).build())
        .await;
    assert_eq!(fits.status(), StatusCode::OK);
    assert_eq!(fits.body().len(), 16);
    assert_eq!(world.routes.runs("/echo"), 1);
}

/// A store that cannot be reached gives 503 with `Retry-After`; the handler does not run and
/// the store's error text stays out of the body.
pub async fn store_unavailable_is_503<Ad: Adapter>(adapter: Ad) {
    let routes = Routes::<()>::new();
    let service = Engine::new(UnavailableRepository).with_config(
        IdempotencyConfig::default().with_unavailable_retry_after(Duration::from_secs(5)),
    );
    let app = adapter.app(service, routes.clone());
    let response = app.send(post("/hello").key("k").build()).await;
    problem(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
    );
    assert_eq!(retry_after(&response), 5);
    assert!(!text(&response).contains("db-secret-host"));
    assert_eq!(routes.runs("/hello"), 0);
}

/// A handler 5xx goes back to the caller as it is; the record is Failed and a retry runs the
/// handler again.
pub async fn handler_5xx_is_returned_and_retried<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    for run in 1..=2 {
        let response = world.send(post("/fail").key("k").build()).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(text(&response), "handler failed");
        assert!(!is_replay(&response));
        assert_eq!(world.routes.runs("/fail"), run);
        let record = world.record("[POST]/fail", "k", None).await.unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.error_count as usize, run);
    }
}

/// A handler panic becomes a 500 problem without the panic's text; the record is Failed and a
/// retry runs the handler again.
pub async fn handler_panic_is_500_and_retried<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    for run in 1..=2 {
        let response = world.send(post("/panic").key("k").build()).await;
        problem(
            &response,
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler-panicked",
        );
        assert!(!text(&response).contains("secret"));
        assert_eq!(world.routes.runs("/panic"), run);
        let record = world.record("[POST]/panic", "k", None).await.unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(
            record.error.as_deref(),
            Some("Got panic \"secret panic text\"")
        );
    }
}

/// 429 (like 408, 409 and 425) means "try again": it is not recorded, a retry runs again.
pub async fn retryable_4xx_is_not_recorded<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    for _ in 0..2 {
        let response = world.send(post("/busy").key("k").build()).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(!is_replay(&response));
    }
    assert_eq!(world.routes.runs("/busy"), 2);
}

/// Other 4xx answers are final: recorded and replayed.
pub async fn recordable_4xx_is_replayed<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let first = world.send(post("/unprocessable").key("k").build()).await;
    assert_eq!(first.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let again = world.send(post("/unprocessable").key("k").build()).await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(is_replay(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(world.routes.runs("/unprocessable"), 1);
}

/// The recordable-status predicate is configurable.
pub async fn recordable_statuses_are_configurable<Ad: Adapter>(adapter: Ad) {
    let config = IdempotencyConfig::default()
        .with_recordable(|status| status.is_success() || status.is_server_error());
    let world = world(&adapter, config);
    world.send(post("/fail").key("k").build()).await;
    let again = world.send(post("/fail").key("k").build()).await;
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(is_replay(&again));
    world.send(post("/unprocessable").key("k").build()).await;
    world.send(post("/unprocessable").key("k").build()).await;
    assert_eq!(world.routes.runs("/fail"), 1);
    assert_eq!(world.routes.runs("/unprocessable"), 2);
}

/// The same key from other credentials is another operation: never a replay of someone else's
/// response.
pub async fn scopes_isolate_clients<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let as_user = |auth: Option<&str>| {
        let call = post("/hello").key("shared");
        match auth {
            Some(auth) => call.header(AUTHORIZATION, auth).build(),
            None => call.build(),
        }
    };
    let alice = world.send(as_user(Some("Bearer alice"))).await;
    let bob = world.send(as_user(Some("Bearer bob"))).await;
    let anonymous = world.send(as_user(None)).await;
    for response in [&alice, &bob, &anonymous] {
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(!is_replay(response));
    }
    assert_eq!(alice.headers()[LOCATION], "/hello/1");
    assert_eq!(bob.headers()[LOCATION], "/hello/2");
    let alice_again = world.send(as_user(Some("Bearer alice"))).await;
    assert!(is_replay(&alice_again));
    assert_eq!(alice_again.headers()[LOCATION], "/hello/1");
    assert_eq!(world.routes.runs("/hello"), 3);
    // Only a hash of the credentials is stored.
    let record = world
        .record(HELLO, "shared", Some("Bearer alice"))
        .await
        .unwrap();
    assert!(!record.key.contains("alice"));
}

/// The same key on two routes is two operations.
pub async fn targets_isolate_routes<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let hello = world.send(post("/hello").key("k").build()).await;
    let echo = world.send(post("/echo").key("k").build()).await;
    assert_eq!(hello.status(), StatusCode::CREATED);
    assert_eq!(echo.status(), StatusCode::OK);
    assert!(!is_replay(&echo));
}

/// Key, target, timeout and scope can come from functions of the request.
pub async fn request_functions_override_the_defaults<Ad: Adapter>(adapter: Ad) {
    let request_id = HeaderName::from_static("x-request-id");
    let tenant = HeaderName::from_static("x-tenant");
    let config = IdempotencyConfig::default()
        .with_key({
            let request_id = request_id.clone();
            move |parts: &http::request::Parts| {
                parts
                    .headers
                    .get(&request_id)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            }
        })
        .with_target(value("greetings"))
        .with_timeout(value(Duration::from_secs(7)))
        .with_scope({
            let tenant = tenant.clone();
            move |parts: &http::request::Parts| {
                parts
                    .headers
                    .get(&tenant)
                    .map(|value| value.as_bytes().to_vec())
            }
        });
    let world = world(&adapter, config);
    let first = world
        .send(post("/hello").header(request_id.clone(), "r1").build())
        .await;
    assert_eq!(text(&first), r#"{"message":"Hello r1!","run":1}"#);
    // With a key function, the X-Idempotency-Key header is not read.
    problem(
        &world.send(post("/hello").key("r1").build()).await,
        StatusCode::BAD_REQUEST,
        "missing-key",
    );
    // One target for both routes: the same key on /echo is a key reused for another request.
    problem(
        &world
            .send(post("/echo").header(request_id.clone(), "r1").build())
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "payload-mismatch",
    );
    // Another tenant is another scope.
    let other = world
        .send(
            post("/echo")
                .header(request_id.clone(), "r1")
                .header(tenant.clone(), "acme")
                .build(),
        )
        .await;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(world.record("greetings", "r1", None).await.is_some());
    let slow = world.spawn(post("/slow").header(request_id, "r2").build());
    world.routes.started().await;
    let record = world.record("greetings", "r2", None).await.unwrap();
    let held_for = record.timeout.unwrap() - record.started_at.unwrap();
    assert_eq!(held_for.num_seconds(), 7);
    world.routes.release(1);
    slow.await.unwrap();
}

/// A response over the stored-response limit reaches the first caller whole; it is recorded
/// without its body, so a retry gets 500 `response-not-stored` and the handler never runs twice.
pub async fn large_response_is_not_stored_and_never_reruns<Ad: Adapter>(adapter: Ad) {
    let config = IdempotencyConfig::default().with_max_stored_response(LARGE_BODY - 1);
    let world = world(&adapter, config);
    let first = world.send(post("/large").key("k").build()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body().len(), LARGE_BODY);
    for _ in 0..2 {
        let again = world.send(post("/large").key("k").build()).await;
        problem(
            &again,
            StatusCode::INTERNAL_SERVER_ERROR,
            "response-not-stored",
        );
    }
    assert_eq!(world.routes.runs("/large"), 1);
    let record = world.record("[POST]/large", "k", None).await.unwrap();
    assert_eq!(record.status, Status::Finished);
    // At the limit it is stored and replayed.
    let world = self::world(
        &adapter,
        IdempotencyConfig::default().with_max_stored_response(LARGE_BODY),
    );
    world.send(post("/large").key("k").build()).await;
    let again = world.send(post("/large").key("k").build()).await;
    assert!(is_replay(&again));
    assert_eq!(again.body().len(), LARGE_BODY);
}

/// An attempt that outlives its timeout is taken over by a retry; when it finishes its result
/// is discarded (500 `superseded`) and the retry's is recorded.
pub async fn timed_out_attempt_is_superseded<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let call = || {
        post("/slow")
            .key("k")
            .header(crate::TIMEOUT_HEADER, "10s")
            .build()
    };
    let stale = world.spawn(call());
    world.routes.started().await;
    world.clock.advance(Duration::from_secs(11));
    let fresh = world.spawn(call());
    world.routes.started().await;
    assert_eq!(world.routes.runs("/slow"), 2);
    world.routes.release(1);
    // Whichever finishes first, exactly one is recorded: let both finish.
    world.routes.release(1);
    let (stale, fresh) = (stale.await.unwrap(), fresh.await.unwrap());
    problem(&stale, StatusCode::INTERNAL_SERVER_ERROR, "superseded");
    assert_eq!(fresh.status(), StatusCode::CREATED);
    let again = world.send(call()).await;
    assert!(is_replay(&again));
    assert_eq!(again.body(), fresh.body());
    assert_eq!(world.routes.runs("/slow"), 2);
}

fn grpc(path: &str) -> Call {
    post(path).header(CONTENT_TYPE, "application/grpc")
}

/// Checks a gRPC rejection (trailers-only, HTTP 200) and returns its `grpc-message`.
fn grpc_rejection(response: &Response<Bytes>, code: i32, slug: &str) -> String {
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    let headers = response.headers();
    assert_eq!(headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(headers[GRPC_STATUS], code.to_string().as_str());
    assert_eq!(
        headers[PROBLEM_TYPE_HEADER],
        format!("https://ana.dev/problems/{slug}").as_str()
    );
    assert!(response.body().is_empty());
    assert!(!is_replay(response));
    headers[GRPC_MESSAGE].to_str().unwrap().to_owned()
}

/// A gRPC answer is an HTTP 200 whatever its outcome: `grpc-status` decides. `NOT_FOUND` is
/// final (recorded, replayed with its status and message, even when the replay list leaves
/// them out); `UNAVAILABLE` is not (recorded Failed, a retry runs again).
pub async fn grpc_statuses_decide_what_is_recorded<Ad: Adapter>(adapter: Ad) {
    let world = world(
        &adapter,
        IdempotencyConfig::default().with_replay_headers([CONTENT_TYPE]),
    );
    let first = world
        .send(grpc("/grpc.Test/NotFound").key("k").build())
        .await;
    assert_eq!(first.headers()[GRPC_STATUS], "5");
    let again = world
        .send(grpc("/grpc.Test/NotFound").key("k").build())
        .await;
    assert!(is_replay(&again));
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()[GRPC_STATUS], "5");
    assert_eq!(again.headers()[GRPC_MESSAGE], "no account, run 1");
    assert_eq!(again.headers()[CONTENT_TYPE], "application/grpc");
    assert_eq!(world.routes.runs("/grpc.Test/NotFound"), 1);
    let record = world.record("[POST]/grpc.Test/NotFound", "k", None).await;
    assert_eq!(record.unwrap().status, Status::Finished);

    for run in 1..=2 {
        let response = world
            .send(grpc("/grpc.Test/Unavailable").key("k").build())
            .await;
        assert_eq!(response.headers()[GRPC_STATUS], "14");
        assert!(!is_replay(&response));
        assert_eq!(world.routes.runs("/grpc.Test/Unavailable"), run);
        let record = world
            .record("[POST]/grpc.Test/Unavailable", "k", None)
            .await;
        assert_eq!(record.unwrap().status, Status::Failed);
    }
}

/// A gRPC call is rejected with a gRPC status rather than a problem document:
/// `INVALID_ARGUMENT` for a missing key or a payload mismatch, `ABORTED` with
/// `grpc-retry-pushback-ms` while the first call runs.
pub async fn grpc_calls_are_rejected_with_grpc_statuses<Ad: Adapter>(adapter: Ad) {
    let world = world(&adapter, IdempotencyConfig::default());
    let missing = world.send(grpc("/grpc.Test/NotFound").build()).await;
    let message = grpc_rejection(&missing, 3, "missing-key");
    assert!(message.contains("X-Idempotency-Key"), "{message}");
    assert_eq!(world.routes.runs("/grpc.Test/NotFound"), 0);

    world
        .send(grpc("/grpc.Test/NotFound").key("k").build())
        .await;
    let other = world
        .send(grpc("/grpc.Test/NotFound").key("k").body("other").build())
        .await;
    grpc_rejection(&other, 3, "payload-mismatch");
    assert_eq!(world.routes.runs("/grpc.Test/NotFound"), 1);

    let first = world.spawn(
        grpc("/slow")
            .key("s")
            .header(crate::TIMEOUT_HEADER, "30s")
            .build(),
    );
    world.routes.started().await;
    let busy = world.send(grpc("/slow").key("s").build()).await;
    let message = grpc_rejection(&busy, 10, "still-running");
    assert_eq!(message, "Operation [POST]/slow still running for key s.");
    assert_eq!(busy.headers()[GRPC_RETRY_PUSHBACK], "5000");
    world.routes.release(1);
    first.await.unwrap();
    assert_eq!(world.routes.runs("/slow"), 1);
}
