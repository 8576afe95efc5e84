//! The store conformance suite on the memory store.

async fn harness() -> ana_core::conformance::MemoryHarness {
    ana_core::conformance::MemoryHarness::new()
}

ana_core::conformance_tests!(harness());
