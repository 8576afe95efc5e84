//! `Manager::call` on the memory store: a new key (claim, run, complete) and a replay.
//!
//! Run with `cargo bench -p ana-bench --bench core` (or `make bench`). Results are 200-byte
//! byte strings, the size of the HTTP benchmark's JSON responses.

// A benchmark harness: a failed set-up or call must abort the run, not be measured.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use ana_core::{BytesCodec, Manager, MemoryRepository, MemorySession, operation};

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
