//! The ana-core store conformance suite on `PgRepository`, each case in its own schema.

mod common;

async fn harness() -> common::PgHarness {
    common::PgHarness::new().await
}

ana_core::conformance_tests!(harness());
ana_core::maintenance_tests!(harness());

/// The same suite with a replay cache in front of the store.
mod cached {
    use super::common;

    async fn harness() -> ana_core::conformance::Cached<common::PgHarness> {
        ana_core::conformance::Cached::new(common::PgHarness::new().await)
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}
