//! End to end over a real socket: an actix `HttpServer` (two workers) on 127.0.0.1:0 with the
//! middleware, driven by a hyper client (or raw TCP where the framing matters).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use ana_actix::{
    Attempt, IdempotencyConfig, IdempotencyMiddleware, MemoryRepository, MemorySession,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Barrier, Semaphore, mpsc};

/// A running server, stopped on [`stop`](Self::stop).
struct Server {
    address: SocketAddr,
    handle: ServerHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Starts an actix server on its own thread: `$factory` is the app factory closure.
macro_rules! start {
    ($factory:expr) => {{
        let factory = $factory;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(factory)
                    .workers(2)
                    .bind(("127.0.0.1", 0))
                    .unwrap();
                let address = server.addrs()[0];
                let server = server.run();
                ready_tx.send((address, server.handle())).unwrap();
                server.await.unwrap();
            });
        });
        let (address, handle) = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Server {
            address,
            handle,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }};
}

impl Server {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Response<String> {
        let mut request = Request::post(format!("http://{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Response::from_parts(parts, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends raw bytes on a fresh connection and returns what came back until the server
    /// closed it (or 10s passed).
    async fn raw(&self, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0_u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .expect("the server answers within 10s");
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    // One response is enough: headers read and the body's length reached.
                    if let Some(text) = complete_response(&answer) {
                        return text;
                    }
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn stop(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.handle.stop(true))
            .await
            .expect("the server stops within 30s");
    }
}

fn complete_response(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| text.into_owned())
}

fn replayed<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

/// 24 requests with one key, at once, while the handler is held: exactly one runs it, the
/// 23 others get 409 `still-running` with `Retry-After`; once it finishes, a retry replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_key_requests_run_the_handler_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
    let server = {
        let (runs, gate) = (Arc::clone(&runs), Arc::clone(&gate));
        start!(move || {
            let (runs, gate, started_tx) =
                (Arc::clone(&runs), Arc::clone(&gate), started_tx.clone());
            App::new().wrap(idempotency.clone()).route(
                "/hello",
                web::post().to(move |session: Attempt<MemorySession>| {
                    // Counted, then announced: the test reads the count after the signal.
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(());
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.acquire().await.unwrap().forget();
                        format!("Hello {}!", session.key())
                    }
                }),
            )
        })
    };
    let server = Arc::new(server);
    let barrier = Arc::new(Barrier::new(24));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..24 {
        let (server, barrier, done_tx) =
            (Arc::clone(&server), Arc::clone(&barrier), done_tx.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let response = server
                .post("/hello", &[("x-idempotency-key", "race")], "hi")
                .await;
            done_tx.send(response).unwrap();
        });
    }
    // The holder cannot finish before the gate opens: the first 23 answers are all 409.
    started.recv().await.unwrap();
    for _ in 0..23 {
        let response = done.recv().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CONFLICT,
            "{}",
            response.body()
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(
            response
                .body()
                .contains("https://ana.dev/problems/still-running")
        );
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    let winner = done.recv().await.unwrap();
    assert_eq!(winner.status(), StatusCode::OK);
    assert_eq!(winner.body(), "Hello race!");
    assert!(!replayed(&winner));
    println!("24 concurrent: 1 executed, 23 × 409");

    let again = server
        .post("/hello", &[("x-idempotency-key", "race")], "hi")
        .await;
    assert!(replayed(&again));
    assert_eq!(again.body(), "Hello race!");
    assert_eq!(again.headers()["content-length"], "11");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // (The request tasks may still hold their clones of `server`.)
    server.stop().await;
}

/// A chunked body (no `Content-Length`) over the limit is cut at the limit on the wire: 413,
/// the handler does not run, and the key stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_413() {
    let runs = Arc::new(AtomicUsize::new(0));
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new())
        .with_config(IdempotencyConfig::default().with_max_request_body(16));
    let server = {
        let runs = Arc::clone(&runs);
        start!(move || {
            let runs = Arc::clone(&runs);
            App::new().wrap(idempotency.clone()).route(
                "/echo",
                web::post().to(move |body: web::Bytes| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async move { body }
                }),
            )
        })
    };
    let chunked = b"POST /echo HTTP/1.1\r\nHost: ana\r\nX-Idempotency-Key: k\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        8\r\naaaaaaaa\r\n8\r\naaaaaaaa\r\n8\r\naaaaaaaa\r\n0\r\n\r\n";
    let answer = server.raw(chunked).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected a 413, got: {answer}"
    );
    assert!(answer.contains("https://ana.dev/problems/payload-too-large"));
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let fits = server
        .post("/echo", &[("x-idempotency-key", "k")], "sixteen bytes ok")
        .await;
    assert_eq!(fits.status(), StatusCode::OK);
    assert_eq!(fits.body(), "sixteen bytes ok");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.stop().await;
}

/// A handler that panics gets a 500 problem on the wire (not a dropped connection), without
/// the panic's text; the attempt is Failed, so a retry runs the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_is_a_500_problem_on_the_wire() {
    let runs = Arc::new(AtomicUsize::new(0));
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
    let server = {
        let runs = Arc::clone(&runs);
        start!(move || {
            let runs = Arc::clone(&runs);
            App::new().wrap(idempotency.clone()).route(
                "/panic",
                web::post().to(move || {
                    let runs = Arc::clone(&runs);
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        if runs.load(Ordering::SeqCst) < 3 {
                            panic!("secret panic text");
                        }
                        HttpResponse::Ok().body("third time lucky")
                    }
                }),
            )
        })
    };
    for run in 1..=2 {
        let response = server
            .post("/panic", &[("x-idempotency-key", "p")], "")
            .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.body().contains("handler-panicked"));
        assert!(!response.body().contains("secret"));
        assert_eq!(runs.load(Ordering::SeqCst), run);
    }
    let third = server
        .post("/panic", &[("x-idempotency-key", "p")], "")
        .await;
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(third.body(), "third time lucky");
    let replay = server
        .post("/panic", &[("x-idempotency-key", "p")], "")
        .await;
    assert!(replayed(&replay));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    server.stop().await;
}

/// Per-scope settings: each scope wrapped with its own config (one store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_have_their_own_settings() {
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
    let server = start!(move || {
        let strict = idempotency.with_config(IdempotencyConfig::default().with_max_request_body(4));
        App::new()
            .service(
                web::scope("/strict")
                    .wrap(strict)
                    .route("", web::post().to(|| async { "strict" })),
            )
            .service(
                web::scope("")
                    .wrap(idempotency.clone())
                    .route("/loose", web::post().to(|| async { "loose" })),
            )
    });
    let strict = server
        .post("/strict", &[("x-idempotency-key", "k")], "too long")
        .await;
    assert_eq!(strict.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(strict.body().contains("4 bytes"));
    let loose = server
        .post("/loose", &[("x-idempotency-key", "k")], "too long")
        .await;
    assert_eq!(loose.status(), StatusCode::OK);
    assert_eq!(loose.body(), "loose");
    let missing = server.post("/strict", &[], "ok").await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}

/// Nested middlewares (the app's and a scope's) make one attempt, under the outermost one:
/// no second claim of the key (which would answer 409 to every request), one run, a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_middlewares_make_one_attempt() {
    let runs = Arc::new(AtomicUsize::new(0));
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
    let server = {
        let runs = Arc::clone(&runs);
        start!(move || {
            let runs = Arc::clone(&runs);
            let inner =
                idempotency.with_config(IdempotencyConfig::default().with_max_request_body(4));
            App::new()
                .wrap(idempotency.clone())
                .service(web::scope("/api").wrap(inner).route(
                    "/hello",
                    web::post().to(move |session: Attempt<MemorySession>| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        async move { format!("Hello {}!", session.key()) }
                    }),
                ))
        })
    };
    let first = server
        .post("/api/hello", &[("x-idempotency-key", "n")], "longer than 4")
        .await;
    assert_eq!(first.status(), StatusCode::OK, "{}", first.body());
    assert_eq!(first.body(), "Hello n!");
    let again = server
        .post("/api/hello", &[("x-idempotency-key", "n")], "longer than 4")
        .await;
    assert!(replayed(&again));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.stop().await;
}

/// A streamed response over the stored-response limit reaches the first caller whole (the
/// part read to measure it put back in front); retries get 500 `response-not-stored` and the
/// handler never runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_response_reaches_the_first_caller_whole() {
    let runs = Arc::new(AtomicUsize::new(0));
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new())
        .with_config(IdempotencyConfig::default().with_max_stored_response(1024));
    let server = {
        let runs = Arc::clone(&runs);
        start!(move || {
            let runs = Arc::clone(&runs);
            App::new().wrap(idempotency.clone()).route(
                "/large",
                web::post().to(move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let chunks = (0..64_u8)
                        .map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![b'a' + i % 26; 1000])));
                    async move { HttpResponse::Ok().streaming(futures_util::stream::iter(chunks)) }
                }),
            )
        })
    };
    let first = server
        .post("/large", &[("x-idempotency-key", "l")], "")
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body().len(), 64_000);
    assert!(first.body().starts_with(&"a".repeat(1000)));
    assert!(first.body().ends_with(&"l".repeat(1000)));
    for _ in 0..2 {
        let again = server
            .post("/large", &[("x-idempotency-key", "l")], "")
            .await;
        assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(again.body().contains("response-not-stored"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.stop().await;
}
