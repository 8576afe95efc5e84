//! A call dropped while its operation runs, on a runtime that shuts down before the clean-up
//! task it spawned could run.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use ana_core::{Manager, MemoryRepository, MemorySession, operation};

/// `Manager::flush` waits for the clean-ups of dropped calls; one that a runtime dropped unrun
/// counts as done (the record's timeout frees it), or `flush` would wait forever.
#[test]
fn flush_returns_when_a_runtime_drops_a_cleanup_unrun() {
    let manager: Manager<&'static str, String, MemorySession> =
        Manager::new(MemoryRepository::new());
    let doomed = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    doomed.block_on(async {
        let op = operation("[POST]/x", "k", "p", |_: MemorySession| async {
            std::future::pending::<Result<String, std::io::Error>>().await
        })
        .timeout(Duration::from_secs(60));
        // Polled until the operation runs (the memory store answers at once), then dropped:
        // its clean-up is spawned on this runtime, which is never driven again.
        let mut call = pin!(manager.run(op));
        let mut context = Context::from_waker(Waker::noop());
        assert!(call.as_mut().poll(&mut context).is_pending());
    });
    drop(doomed);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), manager.flush())
            .await
            .expect("flush returns");
    });
}
