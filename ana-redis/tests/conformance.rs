//! The ana-core store conformance suite on a single Redis server (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each case under its own random key prefix.

mod common;

async fn harness() -> common::RedisHarness {
    common::RedisHarness::single().await
}

ana_core::conformance_tests!(harness());
ana_core::maintenance_tests!(harness());

/// The same suite with a replay cache in front of the store.
mod cached {
    use super::common;

    async fn harness() -> ana_core::conformance::Cached<common::RedisHarness> {
        ana_core::conformance::Cached::new(common::RedisHarness::single().await)
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());
}
