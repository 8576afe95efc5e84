//! The ana-core store conformance suite on `SqliteRepository`, each case in its own database.

mod common;

async fn harness() -> common::SqliteHarness {
    common::SqliteHarness::new().await
}

ana_core::conformance_tests!(harness());
ana_core::maintenance_tests!(harness());

/// The same suite on `sqlite::memory:` (one connection, calls taking turns).
mod memory {
    use super::common;

    async fn harness() -> common::SqliteHarness {
        common::SqliteHarness::memory().await
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}

/// The same suite with a replay cache in front of the store.
mod cached {
    use super::common;

    async fn harness() -> ana_core::conformance::Cached<common::SqliteHarness> {
        ana_core::conformance::Cached::new(common::SqliteHarness::new().await)
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}
