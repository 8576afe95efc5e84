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

/// The same suite with results encrypted at rest.
mod encrypted {
    use ana_core::conformance::{Encrypting, MemoryHarness};

    async fn harness() -> Encrypting<MemoryHarness> {
        Encrypting::new(MemoryHarness::new())
    }

    ana_core::conformance_tests!(harness());
}

/// Encrypted at rest, with a replay cache in front (which keeps plaintext, in memory only).
mod encrypted_cached {
    use ana_core::conformance::{Cached, Encrypting, MemoryHarness};

    async fn harness() -> Encrypting<Cached<MemoryHarness>> {
        Encrypting::new(Cached::new(MemoryHarness::new()))
    }

    ana_core::conformance_tests!(harness());
}
