//! `Manager::call` on the memory store: a new key (claim, run, complete) and a replay.
//!
//! Run with `cargo bench -p ana-bench --bench core` (or `make bench`). Results are 200-byte
//! byte strings, the size of the HTTP benchmark's JSON responses. The `layer_*` benches drive
//! the benchmark's axum route in process (no socket), bare and behind `IdempotencyLayer` on the
//! memory store: their difference is what the layer costs per request. `layer_new_key` runs
//! with `tracing` compiled in and no subscriber; `layer_new_key_without_spans` is the same
//! without the `ana.call` span. `layer_new_key_with_prometheus` (feature `metrics`, a build of
//! its own) takes ana's metrics into a Prometheus recorder.
//! The `encrypted_*` benches are `new_key` and `replay` with the store behind `Encrypted`
//! (AES-256-GCM).

// A benchmark harness: a failed set-up or call must abort the run, not be measured.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use ana_core::encryption::{Encrypted, EncryptionKey, Keyring};
use ana_core::{BytesCodec, Manager, MemoryRepository, MemorySession, operation};

/// Counts allocations: divan prints them per iteration beside the times.
#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

type BenchManager = Manager<&'static str, Vec<u8>, MemorySession>;

fn setup() -> (tokio::runtime::Runtime, BenchManager) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let repository = MemoryRepository::new().with_capacity(usize::MAX);
    (runtime, Manager::with_codec(repository, BytesCodec))
}

/// The same store behind `Encrypted` (AES-256-GCM): compared with `new_key` and `replay`,
/// what encryption at rest costs per call.
fn setup_encrypted() -> (tokio::runtime::Runtime, BenchManager) {
    let (runtime, _) = setup();
    let repository = MemoryRepository::new().with_capacity(usize::MAX);
    let keyring = Keyring::new(EncryptionKey::new(0, &[7; 32]));
    let manager = Manager::with_codec(Encrypted::new(repository, keyring), BytesCodec);
    (runtime, manager)
}

async fn call(manager: &BenchManager, key: &str) -> Vec<u8> {
    let op = operation(
        "[POST]/bench",
        key,
        "payload",
        |_ctx: MemorySession| async { Ok::<_, std::io::Error>(vec![b'x'; 200]) },
    );
    manager.call(op).await.expect("the call succeeds")
}

/// A key never seen before: claim, run, encode, complete.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn new_key(bencher: divan::Bencher<'_, '_>) {
    let (runtime, manager) = setup();
    let next = AtomicU64::new(0);
    bencher
        .with_inputs(|| format!("key-{}", next.fetch_add(1, Ordering::Relaxed)))
        .bench_local_refs(|key| runtime.block_on(call(&manager, key)));
}

/// A key already Finished: claim returns the record, the result is decoded and replayed.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn replay(bencher: divan::Bencher<'_, '_>) {
    let (runtime, manager) = setup();
    runtime.block_on(call(&manager, "replayed"));
    bencher.bench_local(|| runtime.block_on(call(&manager, "replayed")));
}

/// A new key with results encrypted at rest: the seal (a fresh nonce, AES-256-GCM) added.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn encrypted_new_key(bencher: divan::Bencher<'_, '_>) {
    let (runtime, manager) = setup_encrypted();
    let next = AtomicU64::new(0);
    bencher
        .with_inputs(|| format!("key-{}", next.fetch_add(1, Ordering::Relaxed)))
        .bench_local_refs(|key| runtime.block_on(call(&manager, key)));
}

/// A replay with results encrypted at rest: the stored result opened on each call.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn encrypted_replay(bencher: divan::Bencher<'_, '_>) {
    let (runtime, manager) = setup_encrypted();
    runtime.block_on(call(&manager, "replayed"));
    bencher.bench_local(|| runtime.block_on(call(&manager, "replayed")));
}

const RESPONSE: &str = concat!(
    r#"{"id":"pay_7d2c4f1e9a3b","status":"accepted","amount":100,"currency":"EUR","#,
    r#""created":"2026-11-23T10:00:00Z","customer":"cus_4f1e9a3b7d2c","#,
    r#""description":"benchmark payment","metadata":{"order":"ord_00000042"}}"#
);

fn routes() -> axum::Router {
    axum::Router::new().route(
        "/bench",
        axum::routing::post(|_body: bytes::Bytes| async {
            ([(http::header::CONTENT_TYPE, "application/json")], RESPONSE)
        }),
    )
}

/// The route as a server runs it: `axum::serve` calls `with_state(())`, which turns the
/// handlers and their layers into routes once; a router called without it builds the layered
/// route again for each request.
fn router(layered: bool) -> axum::Router {
    let router = if layered {
        routes().layer(ana_axum::IdempotencyLayer::new(
            MemoryRepository::new().with_capacity(usize::MAX),
        ))
    } else {
        routes()
    };
    router.with_state(())
}

/// The layer over a manager that makes no `ana.call` span: what `tracing` costs is the
/// difference with `layer_new_key` (no subscriber listens in these benches).
fn router_without_spans() -> axum::Router {
    let repository = MemoryRepository::new().with_capacity(usize::MAX);
    let manager =
        Manager::with_codec(repository, ana_http::RecordedResponseCodec).with_spans(false);
    routes()
        .layer(ana_axum::IdempotencyLayer::from_engine(
            ana_http::Engine::from_manager(manager),
        ))
        .with_state(())
}

fn request(key: &str) -> http::Request<axum::body::Body> {
    http::Request::post("/bench")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-idempotency-key", key)
        .body(axum::body::Body::from(r#"{"amount":100,"currency":"EUR"}"#))
        .expect("a valid request")
}

async fn send(app: &axum::Router, key: &str) -> usize {
    use tower::ServiceExt;
    let response = app.clone().oneshot(request(key)).await.expect("infallible");
    assert!(response.status().is_success());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    body.len()
}

/// The route without the layer: the baseline of the two benches below.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn layer_bare(bencher: divan::Bencher<'_, '_>) {
    let (runtime, _) = setup();
    let app = router(false);
    bencher.bench_local(|| runtime.block_on(send(&app, "bare")));
}

/// The route behind the layer, a new key each time.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn layer_new_key(bencher: divan::Bencher<'_, '_>) {
    let (runtime, _) = setup();
    let app = router(true);
    let next = AtomicU64::new(0);
    bencher
        .with_inputs(|| format!("key-{}", next.fetch_add(1, Ordering::Relaxed)))
        .bench_local_refs(|key| runtime.block_on(send(&app, key)));
}

/// The route behind the layer, replaying one key.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn layer_replay(bencher: divan::Bencher<'_, '_>) {
    let (runtime, _) = setup();
    let app = router(true);
    runtime.block_on(send(&app, "replayed"));
    bencher.bench_local(|| runtime.block_on(send(&app, "replayed")));
}

/// A new key behind the layer whose manager makes no span: the baseline of `tracing`'s cost.
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn layer_new_key_without_spans(bencher: divan::Bencher<'_, '_>) {
    let (runtime, _) = setup();
    let app = router_without_spans();
    let next = AtomicU64::new(0);
    bencher
        .with_inputs(|| format!("key-{}", next.fetch_add(1, Ordering::Relaxed)))
        .bench_local_refs(|key| runtime.block_on(send(&app, key)));
}

/// A new key behind the layer with a Prometheus recorder taking ana's metrics (feature
/// `metrics`; `make bench` runs it in a build of its own).
#[cfg(feature = "metrics")]
#[divan::bench(sample_count = 100, sample_size = 1000)]
fn layer_new_key_with_prometheus(bencher: divan::Bencher<'_, '_>) {
    let (runtime, _) = setup();
    let app = router(true);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let next = AtomicU64::new(0);
    bencher
        .with_inputs(|| format!("key-{}", next.fetch_add(1, Ordering::Relaxed)))
        .bench_local_refs(|key| {
            metrics::with_local_recorder(&recorder, || runtime.block_on(send(&app, key)))
        });
}
