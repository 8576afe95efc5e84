//! The ana-core store conformance suite on `PgRepository`, each case in its own schema.

mod common;

async fn harness() -> common::PgHarness {
    common::PgHarness::new().await
}

ana_core::conformance_tests!(harness());
