//! The store conformance suite on the memory store.

async fn harness() -> ana_core::conformance::MemoryHarness {
    ana_core::conformance::MemoryHarness::new()
}

ana_core::conformance_tests!(harness());
ana_core::maintenance_tests!(harness());

/// The same suite with a replay cache in front of the store.
mod cached {
    async fn harness() -> ana_core::conformance::Cached<ana_core::conformance::MemoryHarness> {
        ana_core::conformance::Cached::new(ana_core::conformance::MemoryHarness::new())
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}
