//! ana-axum's own behaviour, beyond the shared conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use ana_axum::{Attempt, IdempotencyConfig, IdempotencyLayer, Rejection};
use ana_core::{MemoryRepository, MemorySession, Status};
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

fn request(path: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(path);
    if let Some(key) = key {
        builder = builder.header("x-idempotency-key", key);
    }
    builder.body(Body::from("body")).unwrap()
}

async fn read(response: Response<Body>) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn session_extractor_without_the_layer_is_a_500_problem() {
    let app = Router::new().route(
        "/",
        post(|attempt: Attempt<MemorySession>| async move { attempt.key().to_owned() }),
    );
    let (status, headers, body) = read(app.oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("https://ana.dev/problems/internal"), "{body}");
    assert!(!body.contains("layer"), "internal text stays out: {body}");
}

#[tokio::test]
async fn optional_session_is_none_on_pass_through() {
    let layer = IdempotencyLayer::new(MemoryRepository::new())
        .with_config(IdempotencyConfig::default().with_key_required(false));
    let app = Router::new()
        .route(
            "/",
            post(|attempt: Option<Attempt<MemorySession>>| async move {
                match attempt {
                    Some(attempt) => format!(
                        "key {} attempt {}",
                        attempt.key(),
                        attempt.session().attempt()
                    ),
                    None => "no key".to_owned(),
                }
            }),
        )
        .layer(layer);
    let (_, _, body) = read(app.clone().oneshot(request("/", None)).await.unwrap()).await;
    assert_eq!(body, "no key");
    let (_, _, body) = read(app.oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!(body, "key k attempt 1");
}

#[tokio::test]
async fn per_route_configuration() {
    let layer = IdempotencyLayer::new(MemoryRepository::new());
    let optional = layer.with_config(IdempotencyConfig::default().with_key_required(false));
    let app = Router::new()
        .route("/strict", post(|| async { "strict" }).layer(layer.clone()))
        .route("/lenient", post(|| async { "lenient" }).layer(optional));
    let strict = app.clone().oneshot(request("/strict", None)).await.unwrap();
    assert_eq!(strict.status(), StatusCode::BAD_REQUEST);
    let lenient = app.oneshot(request("/lenient", None)).await.unwrap();
    assert_eq!(lenient.status(), StatusCode::OK);
}

#[tokio::test]
async fn nested_layers_make_one_attempt_under_the_outermost() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let layer = IdempotencyLayer::new(MemoryRepository::new());
    // The route's own layer shares the store: were it to claim too, it would find the outer
    // attempt Running and answer 409.
    let inner = layer.with_config(IdempotencyConfig::default());
    let app = Router::new()
        .route(
            "/",
            post(move || {
                let runs = Arc::clone(&counter);
                async move { format!("run {}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
            })
            .layer(inner),
        )
        .layer(layer.clone());
    let (status, headers, body) =
        read(app.clone().oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "run 1"));
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, body) = read(app.oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "run 1"));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let record = layer
        .engine()
        .manager()
        .get("[POST]/", &ana_http::scoped_key(None, "k"))
        .await
        .unwrap();
    assert_eq!(record.map(|record| record.status), Some(Status::Finished));
}

#[tokio::test]
async fn rejections_carry_the_typed_error() {
    let app = Router::new()
        .route("/", post(|| async { "ok" }))
        .layer(IdempotencyLayer::new(MemoryRepository::new()));
    let response = app.oneshot(request("/", None)).await.unwrap();
    assert!(matches!(
        response.extensions().get::<Rejection>(),
        Some(Rejection::MissingKey { .. })
    ));
}

/// A body sent in several frames (data, then maybe trailers).
struct Frames(Vec<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.0.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(self.0.remove(0))))
        }
    }
}

/// A route answering `frames()` as its body, and how many times it ran.
fn counted_frames(frames: fn() -> Vec<http_body::Frame<Bytes>>) -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let app = Router::new().route(
        "/",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Body::new(Frames(frames())) }
        }),
    );
    (app, runs)
}

#[tokio::test]
async fn a_streamed_response_over_the_limit_reaches_the_first_caller_whole() {
    let layer = IdempotencyLayer::new(MemoryRepository::new())
        .with_config(IdempotencyConfig::default().with_max_stored_response(10));
    let (app, runs) = counted_frames(|| {
        ["0123456", "789abcd", "efghij"]
            .map(|chunk: &'static str| http_body::Frame::data(Bytes::from_static(chunk.as_bytes())))
            .into()
    });
    let app = app.layer(layer);
    let (status, _, body) = read(app.clone().oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "0123456789abcdefghij");
    let (status, _, body) = read(app.oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("response-not-stored"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// One data frame, then trailers with `grpc-status` = `code` and a private trailer: a gRPC
/// answer.
fn grpc_frames(code: &'static str) -> Vec<http_body::Frame<Bytes>> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
    trailers.insert("x-private", http::HeaderValue::from_static("secret"));
    vec![
        http_body::Frame::data(Bytes::from_static(b"abc")),
        http_body::Frame::trailers(trailers),
    ]
}

#[tokio::test]
async fn trailers_are_recorded_and_replayed_after_the_body() {
    let (app, runs) = counted_frames(|| grpc_frames("0"));
    let app = app.layer(IdempotencyLayer::new(MemoryRepository::new()));
    for replay in [false, true] {
        let response = app.clone().oneshot(request("/", Some("k"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().contains_key("idempotent-replayed"),
            replay
        );
        assert!(
            !response
                .headers()
                .contains_key(http::header::CONTENT_LENGTH),
            "replay {replay}: {:?}",
            response.headers()
        );
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        // The first caller gets every trailer; a replay only the allow-listed ones.
        assert_eq!(trailers.contains_key("x-private"), !replay);
        assert_eq!(collected.to_bytes(), "abc");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Over a real HTTP/1.1 connection (chunked, `TE: trailers`), a replay announces its
/// trailers in `Trailer`, without which hyper would drop them.
#[tokio::test]
async fn http1_replays_send_their_trailers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (app, runs) = counted_frames(|| grpc_frames("0"));
    let app = app.layer(IdempotencyLayer::new(MemoryRepository::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut replays = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: ana\r\nTE: trailers\r\nX-Idempotency-Key: k\r\n\
                  Content-Length: 2\r\nConnection: close\r\n\r\nhi",
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        replays.push(response);
    }
    let replay = replays[1].to_ascii_lowercase();
    assert!(replay.contains("idempotent-replayed: true"), "{replay}");
    assert!(replay.contains("trailer: grpc-status\r\n"), "{replay}");
    assert!(replay.contains("transfer-encoding: chunked"), "{replay}");
    assert!(replay.ends_with("0\r\ngrpc-status: 0\r\n\r\n"), "{replay}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failure_told_in_the_trailers_is_not_recorded() {
    // HTTP 200, but gRPC UNAVAILABLE: a retry runs again.
    let (app, runs) = counted_frames(|| grpc_frames("14"));
    let app = app.layer(IdempotencyLayer::new(MemoryRepository::new()));
    for run in 1..=2 {
        let response = app.clone().oneshot(request("/", Some("k"))).await.unwrap();
        assert!(!response.headers().contains_key("idempotent-replayed"));
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
        assert_eq!(runs.load(Ordering::SeqCst), run);
    }
}

/// A plain tower service (as in hyper or tonic) that fails, and checks it was polled ready
/// before each call: its clones start unready.
#[derive(Debug)]
struct Flaky {
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for Flaky {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            calls: Arc::clone(&self.calls),
        }
    }
}

impl Service<Request<Body>> for Flaky {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if request.uri().path() == "/error" {
                Err(std::io::Error::other(format!("inner failure {call}")))
            } else {
                Ok(Response::new(Body::from(format!("call {call}"))))
            }
        })
    }
}

#[tokio::test]
async fn a_plain_tower_service_is_polled_ready_and_its_errors_pass_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(MemoryRepository::new());
    let mut service = tower::Layer::layer(
        &layer,
        Flaky {
            ready: false,
            calls: Arc::clone(&calls),
        },
    );
    let response = ServiceExt::<Request<Body>>::ready(&mut service)
        .await
        .unwrap()
        .call(request("/ok", Some("k")))
        .await
        .unwrap();
    assert_eq!(read(response).await.2, "call 1");
    let replay = ServiceExt::<Request<Body>>::ready(&mut service)
        .await
        .unwrap()
        .call(request("/ok", Some("k")))
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    for attempt in 1..=2 {
        let error = ServiceExt::<Request<Body>>::ready(&mut service)
            .await
            .unwrap()
            .call(request("/error", Some("e")))
            .await
            .unwrap_err();
        assert!(error.to_string().starts_with("inner failure"));
        let record = layer
            .engine()
            .manager()
            .get("[POST]/error", &ana_http::scoped_key(None, "e"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.error_count, attempt);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_replay_cache_answers_repeated_replays() {
    let cache = ana_core::ReplayCache::new(1 << 20);
    let service = ana_http::Engine::new(MemoryRepository::new()).with_replay_cache(cache.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let app = Router::new()
        .route(
            "/",
            post(move || async move {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    [("content-type", "text/plain"), ("set-cookie", "s=1")],
                    format!("run {n}"),
                )
            }),
        )
        .layer(IdempotencyLayer::from_engine(service));
    let (status, headers, body) =
        read(app.clone().oneshot(request("/", Some("k"))).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "run 1"));
    assert!(headers.get("set-cookie").is_some());
    for _ in 0..2 {
        let (status, headers, body) =
            read(app.clone().oneshot(request("/", Some("k"))).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "run 1"));
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(headers["content-type"], "text/plain");
        assert!(headers.get("set-cookie").is_none(), "never replayed");
    }
    // Another payload under the same key: 422, from the cache too.
    let other = Request::post("/")
        .header("x-idempotency-key", "k")
        .body(Body::from("other body"))
        .unwrap();
    let (status, _, _) = read(app.oneshot(other).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!((runs.load(Ordering::SeqCst), cache.hits()), (1, 3));
}

/// A layer inside `Router::nest` sees the route's URI without the nesting prefix; the record is
/// still made on the URI the client sent: two nested paths are two operations, and the route
/// is called with the URI it was routed by.
#[tokio::test]
async fn nested_routes_are_told_apart_by_their_full_path() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let layer = IdempotencyLayer::new(MemoryRepository::new());
    let accounts = Router::new()
        .route(
            "/transfer",
            post(move |uri: http::Uri| {
                let runs = Arc::clone(&counter);
                async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    format!("run {run} at {}", uri.path())
                }
            }),
        )
        .layer(layer.clone());
    let app = Router::new().nest("/accounts/{id}", accounts);
    let send = |path: &'static str| {
        let app = app.clone();
        async move { read(app.oneshot(request(path, Some("k1"))).await.unwrap()).await }
    };

    let (status, _, body) = send("/accounts/1/transfer").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "run 1 at /transfer")
    );
    let (status, headers, body) = send("/accounts/2/transfer").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "run 2 at /transfer")
    );
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, body) = send("/accounts/1/transfer").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "run 1 at /transfer")
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let key = ana_http::scoped_key(None, "k1");
    let manager = layer.engine().manager();
    for target in ["[POST]/accounts/1/transfer", "[POST]/accounts/2/transfer"] {
        let record = manager.get(target, &key).await.unwrap();
        assert_eq!(
            record.map(|record| record.status),
            Some(Status::Finished),
            "{target}"
        );
    }
    assert!(
        manager
            .get("[POST]/transfer", &key)
            .await
            .unwrap()
            .is_none()
    );
}
