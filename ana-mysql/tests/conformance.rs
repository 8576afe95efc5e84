//! The ana-core store conformance suite on `MySqlRepository`, each case in its own database.

mod common;

async fn harness() -> common::MySqlHarness {
    common::MySqlHarness::new().await
}

ana_core::conformance_tests!(harness());
ana_core::maintenance_tests!(harness());

/// The same suite with a replay cache in front of the store.
mod cached {
    use super::common;

    async fn harness() -> ana_core::conformance::Cached<common::MySqlHarness> {
        ana_core::conformance::Cached::new(common::MySqlHarness::new().await)
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}
