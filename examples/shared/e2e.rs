//! The end-to-end suite examples 02 (axum) and 03 (actix-web) share, so that both serve the
//! same walkthrough: the example's binary on a free port, driven over a real socket by an HTTP
//! client. Each example's `tests/e2e.rs` includes this file as a module and names its binary
//! (`BINARY`), its orders table (`ORDERS_TABLE`) and the `chrono` its adapter re-exports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Barrier, oneshot, watch};
use tokio::task::JoinHandle;

use super::{BINARY, ORDERS_TABLE, chrono};

const NOT_PERSISTED: &str = "Not persisted!";

/// The example server, killed on drop; counts the handler runs it prints.
struct Server {
    child: Child,
    address: String,
    reader: JoinHandle<usize>,
    /// How many times the handler has run so far.
    runs: watch::Receiver<usize>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(BINARY);
        command
            .env("PORT", "0")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("SLOW_MS")
            .env_remove("ANA_ENCRYPTION_KEYS")
            .env_remove("ANA_FINGERPRINT_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the example binary starts");
        let stdout = child.stdout.take().unwrap();
        let (address_tx, address_rx) = oneshot::channel();
        let (runs_tx, runs_rx) = watch::channel(0);
        let reader = tokio::spawn(async move {
            let mut runs = 0;
            let mut lines = BufReader::new(stdout).lines();
            let mut address_tx = Some(address_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("Listening on http://") {
                    let address = rest.split_whitespace().next().unwrap().to_owned();
                    if let Some(tx) = address_tx.take() {
                        let _ = tx.send(address);
                    }
                } else if line == NOT_PERSISTED {
                    runs += 1;
                    runs_tx.send_replace(runs);
                }
            }
            runs
        });
        let address = tokio::time::timeout(Duration::from_secs(60), address_rx)
            .await
            .expect("the example listens within 60s")
            .expect("the example printed its address (see its stderr above)");
        Server {
            child,
            address,
            reader,
            runs: runs_rx,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Waits until the handler has started `runs` times (it prints before it works).
    async fn handler_started(&self, runs: usize) {
        let mut seen = self.runs.clone();
        tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|n| *n >= runs))
            .await
            .expect("the handler starts within 30s")
            .expect("the server is running");
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Response<String> {
        self.send(Method::POST, path, headers, body).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response<String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Response::from_parts(parts, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Stops the server and returns how many times the handler ran: every line was written
    /// before its response was sent, so after the kill the reader sees them all before EOF.
    async fn stop(mut self) -> usize {
        self.child.kill().await.unwrap();
        self.reader.await.unwrap()
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn replayed<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_walkthrough_on_the_memory_store() {
    let server = Server::start(&[]).await;
    let key = unique("abc");
    let headers = [("x-idempotency-key", key.as_str())];

    let first = server.post("/hello", &headers, r#"{"amount":10}"#).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body(), &format!("Hello {key}!\n"));
    assert!(!replayed(&first));

    let again = server.post("/hello", &headers, r#"{"amount":10}"#).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(again.headers()["content-type"], "text/plain; charset=utf-8");

    let other = server.post("/hello", &headers, r#"{"amount":99}"#).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    assert!(
        other
            .body()
            .contains("https://ana.dev/problems/payload-mismatch")
    );

    let bad = server
        .post(
            "/hello",
            &[
                ("x-idempotency-key", "def"),
                ("x-idempotency-timeout", "soon"),
            ],
            "",
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.body().contains(r#""header":"X-Idempotency-Timeout""#));

    let missing = server.post("/hello", &[], "").await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert!(missing.body().contains("missing-key"));

    assert_eq!(server.stop().await, 1);
}

/// The Go original's README call, on a path no route names, with a GET: any path and method
/// is behind the layer (the middleware). Its retry is replayed; its own reference time, 1835-09-20T09:00:00Z,
/// is answered 422 `expired` (reference time + 24h expiration passed long ago), the handler
/// not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_curl_is_answered_on_any_path() {
    let server = Server::start(&[]).await;
    let key = unique("some-key-as-string");
    let now = chrono::Utc::now().to_rfc3339();
    let call = |reference_time: String| {
        let key = key.clone();
        let server = &server;
        async move {
            let headers = [
                ("X-Idempotency-Key", key.as_str()),
                ("X-Idempotency-Reference-Time", reference_time.as_str()),
                ("X-Idempotency-Timeout", "10s"),
                ("X-Idempotency-Expiration", "24h"),
            ];
            server
                .send(Method::GET, "/whatever-you-may-like", &headers, "")
                .await
        }
    };
    let first = call(now.clone()).await;
    assert_eq!(first.status(), StatusCode::OK, "{}", first.body());
    assert_eq!(first.body(), &format!("Hello {key}!\n"));
    assert!(!replayed(&first));
    let again = call(now).await;
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());

    let expired = call("1835-09-20T09:00:00Z".to_owned()).await;
    assert_eq!(expired.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(expired.body().contains("https://ana.dev/problems/expired"));

    let hello = unique("hello");
    let hello = server
        .post("/hello", &[("x-idempotency-key", &hello)], "hi")
        .await;
    assert_eq!(hello.status(), StatusCode::OK);
    assert_eq!(server.stop().await, 2);
}

/// `GET /metrics` (outside the layer: no key) counts the calls by outcome: after a new key, a
/// replay, a key reused with another body and a duplicate in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome() {
    let server = Arc::new(Server::start(&[("SLOW_MS", "2000")]).await);
    let key = unique("metrics");
    let headers = [("x-idempotency-key", key.as_str())];
    let first = {
        let server = Arc::clone(&server);
        let key = key.clone();
        tokio::spawn(async move {
            server
                .post("/hello", &[("x-idempotency-key", &key)], "a")
                .await
        })
    };
    server.handler_started(1).await;
    let busy = server.post("/hello", &headers, "a").await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    let replay = server.post("/hello", &headers, "a").await;
    assert!(replayed(&replay));
    let other = server.post("/hello", &headers, "b").await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let metrics = server.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.body();
    for outcome in ["executed", "replayed", "payload_mismatch", "still_running"] {
        let line = format!("ana_calls_total{{target=\"[POST]*\",outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&line), "no {line} in\n{text}");
    }
    assert!(text.contains("ana_store_duration_seconds"), "{text}");
    assert!(!text.contains(&key), "a key leaked into the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_same_key_requests_run_the_handler_once() {
    let server = Arc::new(Server::start(&[("SLOW_MS", "300")]).await);
    let key = unique("race");
    let barrier = Arc::new(Barrier::new(24));
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (server, barrier, key) = (Arc::clone(&server), Arc::clone(&barrier), key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                server
                    .post("/hello", &[("x-idempotency-key", &key)], "hi")
                    .await
            })
        })
        .collect();
    let (mut executed, mut replays, mut conflicts) = (0, 0, 0);
    for task in tasks {
        let response = task.await.unwrap();
        match response.status() {
            StatusCode::OK if replayed(&response) => replays += 1,
            StatusCode::OK => executed += 1,
            StatusCode::CONFLICT => {
                assert!(response.body().contains("still-running"));
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", response.body()),
        }
    }
    println!("24 concurrent: {executed} executed, {conflicts} × 409, {replays} replayed");
    assert_eq!(executed, 1);
    assert_eq!(executed + replays + conflicts, 24);
    let after = server
        .post("/hello", &[("x-idempotency-key", &key)], "hi")
        .await;
    assert!(replayed(&after));
    assert_eq!(after.body(), &format!("Hello {key}!\n"));
    let server = Arc::try_unwrap(server)
        .ok()
        .expect("every request finished");
    assert_eq!(server.stop().await, 1);
}

/// A client's tiny timeout would let every staggered duplicate take the key over and run the
/// slow handler again: ten requests 50 ms apart with `X-Idempotency-Timeout: 1ns` are each
/// refused with 400, and the handler never runs. The same ten at the floor run it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_requests_with_a_tiny_timeout_are_refused() {
    let server = Arc::new(Server::start(&[("SLOW_MS", "1000")]).await);
    for (timeout, key) in [("1ns", unique("tiny")), ("1s", unique("floor"))] {
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            ticks.tick().await;
            let (server, key) = (Arc::clone(&server), key.clone());
            tasks.push(tokio::spawn(async move {
                let headers = [
                    ("x-idempotency-key", &*key),
                    ("x-idempotency-timeout", timeout),
                ];
                server.post("/hello", &headers, "hi").await
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            let response = task.await.unwrap();
            if timeout == "1ns" {
                assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
                assert!(
                    response.body().contains("invalid-header"),
                    "{}",
                    response.body()
                );
                assert!(
                    response.body().contains("minimum of 1s"),
                    "{}",
                    response.body()
                );
            }
            statuses.push(response.status().as_u16());
        }
        println!("ten staggered with timeout {timeout}: {statuses:?}");
        if timeout == "1ns" {
            assert_eq!(*server.runs.borrow(), 0);
        } else {
            // Held for 1 s, the handler sleeps 1 s: the first runs, the rest get 409 or, once
            // it finished, the replay; none takes the key over.
            assert_eq!(
                statuses.iter().filter(|s| **s == 200).count(),
                1,
                "{statuses:?}"
            );
            assert!(
                statuses.iter().all(|s| matches!(s, 200 | 409)),
                "{statuses:?}"
            );
        }
    }
    let server = Arc::try_unwrap(server)
        .ok()
        .expect("every request finished");
    assert_eq!(server.stop().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_orders_commit_once_and_roll_back_on_failure() {
    let url = database_url();
    let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|error| {
            panic!("Postgres at {url} is needed (set DATABASE_URL or run `make services`): {error}")
        });
    let server = Server::start(&[("DATABASE_URL", &url)]).await;
    let count = |key: String| {
        let pool = pool.clone();
        async move {
            ana_pg::sqlx::query_scalar::<_, i64>(ana_pg::sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {ORDERS_TABLE} WHERE idempotency_key = $1"
            )))
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    let ok = unique("order");
    let first = server
        .post("/orders", &[("x-idempotency-key", &ok)], "book")
        .await;
    assert_eq!(first.status(), StatusCode::CREATED, "{}", first.body());
    assert!(first.body().ends_with(&format!("created for {ok}\n")));
    let again = server
        .post("/orders", &[("x-idempotency-key", &ok)], "book")
        .await;
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(count(ok.clone()).await, 1, "the order row committed once");

    let failing = unique("order-fail");
    for _ in 0..2 {
        let response = server
            .post("/orders", &[("x-idempotency-key", &failing)], "fail me")
            .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!replayed(&response));
        assert_eq!(count(failing.clone()).await, 0, "the order row rolled back");
    }

    let hello = unique("pg-hello");
    server
        .post("/hello", &[("x-idempotency-key", &hello)], "")
        .await;
    let replay = server
        .post("/hello", &[("x-idempotency-key", &hello)], "")
        .await;
    assert!(replayed(&replay));
    // 1 order + 2 failed attempts + 1 hello.
    assert_eq!(server.stop().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_replays() {
    let url = redis_url();
    let server = Server::start(&[("REDIS_URL", &url)]).await;
    let key = unique("redis");
    let first = server
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "Redis at {url} is needed (set REDIS_URL or run `make services`): {}",
        first.body()
    );
    let again = server
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(server.stop().await, 1);
}

/// `DATABASE_URL=sqlite://file.db`: the records are in the file, and a server started again
/// on it (the first one killed) replays what the first one ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_records_survive_a_restart() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("example-02")));
    let url = format!("sqlite://{}", path.display());
    let key = unique("sqlite");

    let server = Server::start(&[("DATABASE_URL", &url)]).await;
    let first = server
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert_eq!(first.status(), StatusCode::OK, "{}", first.body());
    assert!(!replayed(&first));
    assert_eq!(server.stop().await, 1);

    let restarted = Server::start(&[("DATABASE_URL", &url)]).await;
    let again = restarted
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert!(replayed(&again), "{again:?}");
    assert_eq!(again.body(), first.body());
    assert_eq!(restarted.stop().await, 0, "the handler did not run again");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_replays() {
    let url = std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let server = Server::start(&[("DATABASE_URL", &url)]).await;
    let key = unique("mysql");
    let first = server
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "MySQL or MariaDB at {url} is needed (set MYSQL_URL or run `make services`): {}",
        first.body()
    );
    let again = server
        .post("/hello", &[("x-idempotency-key", &key)], "x")
        .await;
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());
    assert_eq!(server.stop().await, 1);
}

const KEYS: &str =
    "1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=,0:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const FINGERPRINT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A bad secret ends the example at once: a non-zero exit and one line naming the variable,
/// never the key material.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_exit_with_one_line() {
    for (name, value) in [
        ("ANA_ENCRYPTION_KEYS", "0:c2VjcmV0LWJ1dC1zaG9ydA=="),
        (
            "ANA_ENCRYPTION_KEYS",
            "zero:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
        ("ANA_FINGERPRINT_KEY", "c2VjcmV0LWJ1dC1zaG9ydA=="),
    ] {
        let output = Command::new(BINARY)
            .env("PORT", "0")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env(name, value)
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains(value), "{stderr}");
    }
}

/// With both secrets set, the walkthrough's replay holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_replays_with_secrets_on() {
    let server = Server::start(&[
        ("ANA_ENCRYPTION_KEYS", KEYS),
        ("ANA_FINGERPRINT_KEY", FINGERPRINT_KEY),
    ])
    .await;
    let key = unique("secret");
    let headers = [("x-idempotency-key", key.as_str())];
    let first = server.post("/hello", &headers, "{\"amount\":10}").await;
    assert_eq!(first.status(), StatusCode::OK);
    let again = server.post("/hello", &headers, "{\"amount\":10}").await;
    assert!(replayed(&again));
    assert_eq!(again.body(), first.body());
    let other = server.post("/hello", &headers, "{\"amount\":99}").await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.stop().await, 1);
}

/// `ANA_ENCRYPTION_KEYS=… DATABASE_URL=… make example-02`: the walkthrough replays, and
/// `ana.tracked_operations.result` holds ciphertext under the current key (id 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_results_are_ciphertext_with_secrets_on() {
    let url = database_url();
    let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|error| panic!("Postgres at {url} is needed: {error}"));
    let server = Server::start(&[("DATABASE_URL", &url), ("ANA_ENCRYPTION_KEYS", KEYS)]).await;
    let key = unique("cipher");
    let headers = [("x-idempotency-key", key.as_str())];
    let first = server.post("/hello", &headers, "{}").await;
    assert_eq!(first.body(), &format!("Hello {key}!\n"));
    assert!(replayed(&server.post("/hello", &headers, "{}").await));
    assert_eq!(server.stop().await, 1);
    let stored: Vec<u8> = ana_pg::sqlx::query_scalar(
        "SELECT result FROM ana.tracked_operations WHERE target = '[POST]/hello' AND key LIKE '%:' || $1",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored[0], 0xA1);
    assert_eq!(stored[1..5], 1u32.to_be_bytes());
    assert!(!stored.windows(5).any(|w| w == b"Hello"));
}
